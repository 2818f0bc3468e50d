"""Packed rows (segment ids) and shared-prompt rows (branch ids) give the same
per-sequence log-prob sums as separate forward passes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lnpo.logprobs import batch_sequence_logps
from lnpo.models import Decoder, ModelConfig

T = 16
# Sliding window 3 on alternate layers: a row-order window would differ from the
# position-based one in the shared-prompt row, so the test checks that too.
CONFIG = ModelConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=8, model_type="gemma2", norm_plus_one=True, post_norms=True, embed_scale=True,
    activation="gelu_tanh", sliding_window=3, layer_types=("sliding_attention", "full_attention"),
    attn_logit_softcap=2.0, final_logit_softcap=4.0, query_pre_attn_scalar=8.0, tie_embeddings=True,
    initializer_range=0.2,
)


def _row(pieces):
    """pieces: (tokens, positions, segment, branch, seq_index or -1, has_last_target) -> row arrays [T]."""
    cols = {k: np.zeros(T, np.int32) for k in ("input_ids", "positions", "segment_ids", "branch_ids", "targets")}
    cols["seq_index"] = np.full(T, -1, np.int32)
    at = 0
    for toks, pos, seg, br, sidx in pieces:
        n = len(toks)
        sl = slice(at, at + n)
        cols["input_ids"][sl], cols["positions"][sl] = toks, pos
        cols["segment_ids"][sl], cols["branch_ids"][sl] = seg, br
        if sidx >= 0:  # every token but the last predicts the next one of its piece
            cols["targets"][at : at + n - 1] = toks[1:]
            cols["seq_index"][at : at + n - 1] = sidx
        at += n
    assert at <= T
    return cols


def test_packed_and_shared_prompt_rows_match_separate_passes():
    model = Decoder(CONFIG, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(0)
    tok = lambda n: rng.integers(1, 64, size=n).astype(np.int32)  # noqa: E731
    s1, s2, s3 = tok(5), tok(4), tok(6)
    prompt, chosen, rejected = tok(4), tok(3), tok(5)
    P = len(prompt)

    rows = [
        _row([(s1, np.arange(5), 1, 0, 0), (s2, np.arange(4), 2, 0, 1)]),  # two packed sequences
        _row([(s3, np.arange(6), 1, 0, 2)]),
        # shared prompt: prompt[:-1] once (branch 0); each branch repeats the last prompt
        # token so that it can predict its own first response token; positions continue.
        _row([
            (prompt[:-1], np.arange(P - 1), 1, 0, -1),
            (np.concatenate([prompt[-1:], chosen]), np.arange(P - 1, P + 3), 1, 1, 3),
            (np.concatenate([prompt[-1:], rejected]), np.arange(P - 1, P + 5), 1, 2, 4),
        ]),
    ]
    batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}

    @jax.jit
    def packed(state, batch):
        return batch_sequence_logps(nnx.merge(graphdef, state), batch, 5, chunk_size=5)

    sums, counts = packed(state, batch)

    # separate passes: each full sequence alone (right-padded, causal), naive log-softmax
    seqs = [s1, s2, s3, np.concatenate([prompt, chosen]), np.concatenate([prompt, rejected])]
    first_target = [0, 0, 0, P - 1, P - 1]  # only response tokens count for the pairs
    ids = np.zeros((5, T), np.int32)
    seg = np.zeros((5, T), np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], seg[i, : len(s)] = s, 1

    @jax.jit
    def separate(state, ids, seg):
        return jax.nn.log_softmax(nnx.merge(graphdef, state)(ids, segment_ids=seg), axis=-1)

    logp = np.asarray(separate(state, ids, seg))
    ref_sums = np.array([
        sum(logp[i, t, s[t + 1]] for t in range(first_target[i], len(s) - 1)) for i, s in enumerate(seqs)
    ])
    ref_counts = np.array([len(s) - 1 - first_target[i] for i, s in enumerate(seqs)])

    np.testing.assert_array_equal(np.asarray(counts), ref_counts)
    np.testing.assert_allclose(np.asarray(sums), ref_sums, rtol=1e-5, atol=1e-4)
    # the sequences really differ, so a mask leaking across segments/branches would show
    assert np.ptp(ref_sums / ref_counts) > 1e-3
