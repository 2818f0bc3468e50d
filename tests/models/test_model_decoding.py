"""KV-cache decoding equals the full forward pass (left- and right-padded prompts)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lnpo.models import Decoder, ModelConfig

CONFIGS = {
    "llama": ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, initializer_range=0.2),
    # alternating local/global layers, soft-caps, (1 + w) norms: the sliding window
    # is smaller than prompt + generation, so slot positions matter.
    "gemma2": ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                          num_kv_heads=1, head_dim=8, model_type="gemma2", norm_plus_one=True, post_norms=True,
                          embed_scale=True, activation="gelu_tanh", sliding_window=3,
                          layer_types=("sliding_attention", "full_attention"), attn_logit_softcap=1.0,
                          final_logit_softcap=3.0, query_pre_attn_scalar=8.0, tie_embeddings=True,
                          initializer_range=0.2),
}

LENGTHS = (5, 2, 4)  # real prompt lengths per row
PROMPT = 5
STEPS = 4


@functools.cache
def _setup(name):
    """(model, state, jitted decode step, jitted forward) shared by the parametrizations."""
    model = Decoder(CONFIGS[name], rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, ids, pos, valid, cache):
        return nnx.merge(graphdef, state).decode(ids, pos, cache, valid_BxT=valid)

    @jax.jit
    def forward(state, ids, segment_ids):
        return nnx.merge(graphdef, state)(ids, segment_ids=segment_ids)

    return model, state, step, forward


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("padding", ["left", "right"])
def test_kv_cache_matches_full_forward(name, padding):
    model, state, step, forward = _setup(name)
    rng = np.random.default_rng(0)
    B = len(LENGTHS)
    seqs = [rng.integers(1, 96, size=n + STEPS) for n in LENGTHS]  # prompt + tokens fed while decoding

    ids = np.zeros((B, PROMPT), np.int32)
    valid = np.zeros((B, PROMPT), bool)
    pos = np.zeros((B, PROMPT), np.int32)
    for b, n in enumerate(LENGTHS):
        sl = slice(PROMPT - n, PROMPT) if padding == "left" else slice(0, n)
        ids[b, sl], valid[b, sl], pos[b, sl] = seqs[b][:n], True, np.arange(n)

    cache = model.init_cache(B, PROMPT + STEPS)
    logits, cache = step(state, ids, pos, valid, cache)
    got = [[np.asarray(logits[b, (PROMPT - 1) if padding == "left" else n - 1])] for b, n in enumerate(LENGTHS)]
    for s in range(STEPS - 1):
        tok = np.array([[seqs[b][n + s]] for b, n in enumerate(LENGTHS)], np.int32)
        p = np.array([[n + s] for n in LENGTHS], np.int32)
        logits, cache = step(state, tok, p, np.ones((B, 1), bool), cache)
        for b in range(B):
            got[b].append(np.asarray(logits[b, 0]))
    assert int(cache.index) == PROMPT + STEPS - 1

    # reference: every full sequence in one right-padded forward pass
    full = np.zeros((B, PROMPT + STEPS), np.int32)
    seg = np.zeros((B, PROMPT + STEPS), np.int32)
    for b, n in enumerate(LENGTHS):
        full[b, : n + STEPS - 1], seg[b, : n + STEPS - 1] = seqs[b][: n + STEPS - 1], 1
    ref_all = np.asarray(forward(state, full, seg))
    for b, n in enumerate(LENGTHS):
        ref = ref_all[b, n - 1 : n + STEPS - 1]
        np.testing.assert_allclose(np.stack(got[b]), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def test_cache_overflow_is_reported():
    model = Decoder(CONFIGS["llama"], rngs=nnx.Rngs(0))
    cache = model.init_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache overflow"):
        model.decode(jnp.ones((1, 5), jnp.int32), jnp.arange(5)[None], cache)
