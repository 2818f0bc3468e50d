"""lnpo.models.attention_kernels: the fused (jax.nn / cuDNN) route against lnpo's einsum attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lnpo.models as M
from lnpo.models import attention as attention_layer
from lnpo.models import attention_kernels as A

HAS_GPU = any(d.platform == "gpu" for d in jax.devices())


def _mask_inputs(B=2, T=24):
    """Token ids of rows that exercise every mask rule: two segments, padding, branches."""
    segments = np.zeros((B, T), np.int32)
    segments[0, :14], segments[0, 14:20] = 1, 2  # two packed sequences, then padding
    segments[1, :] = 1
    branches = np.zeros((B, T), np.int32)
    branches[1, 8:16], branches[1, 16:] = 1, 2  # shared prompt, then two completions
    positions = np.zeros((B, T), np.int32)
    positions[0, :14], positions[0, 14:20] = np.arange(14), np.arange(6)
    positions[1] = np.r_[np.arange(16), np.arange(8, T - 8)]
    return segments, branches, positions


@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 4), (6, 1)])
def test_fused_route_matches_einsum_attention(heads, kv_heads, window):
    """fused_attention (jax.nn.dot_product_attention, causal + mask as bias) computes
    what dot_product_attention computes, for every valid query, with GQA."""
    rng = np.random.default_rng(heads * 10 + kv_heads + window)
    B, T, D = 2, 23, 8  # odd: fused_attention pads one masked position for cuDNN
    seg, br, pos = _mask_inputs(B, T)
    info = A.TokenInfo(jnp.asarray(pos), jnp.asarray(seg), jnp.asarray(br), jnp.arange(T, dtype=jnp.int32))
    mask = A.attention_mask(info, info, window)
    q = jnp.asarray(rng.normal(size=(B, T, heads, D)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, T, kv_heads, D)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(B, T, kv_heads, D)), jnp.float32)
    want = A.dot_product_attention(q, k, v, mask, scale=D**-0.5)
    got = A.fused_attention(q, k, v, mask, scale=D**-0.5, implementation="xla")
    valid = np.asarray(seg) > 0
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], rtol=1e-5, atol=1e-6)
    assert np.isfinite(np.asarray(got)).all()


def _padded_early(B=2, T=24):
    """Rows whose padding falls in early query chunks (a short sequence, padding, then another)."""
    seg, br, pos = _mask_inputs(B, T)
    seg[0, 3:9] = 0  # queries 3-8 see no key: chunks before the last hold fully masked queries
    return seg, br, pos


@pytest.mark.parametrize("chunk", [5, 8, 22])
@pytest.mark.parametrize("window,softcap", [(0, None), (5, None), (0, 3.0)])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (6, 1)])
def test_causal_chunks_match_einsum_attention(chunk, window, softcap, heads, kv_heads):
    """causal_chunked_attention (contiguous query chunks, each against the keys up to its end)
    equals dot_product_attention over the whole row, at every position (a query with no visible
    key included), with the gradients of q, k and v; packed segments, padding in early chunks,
    shared-prompt branches, a sliding window, soft-capping and GQA."""
    rng = np.random.default_rng(chunk * 100 + heads + window)
    B, T, D = 2, 23, 8  # 23: the last chunk is short (1 query with chunks of 22)
    seg, br, pos = _padded_early(B, T)
    info = A.TokenInfo(jnp.asarray(pos), jnp.asarray(seg), jnp.asarray(br), jnp.arange(T, dtype=jnp.int32))
    q = jnp.asarray(rng.normal(size=(B, T, heads, D)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, T, kv_heads, D)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(B, T, kv_heads, D)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(B, T, heads, D)), jnp.float32)

    def whole(q, k, v):
        out = A.dot_product_attention(q, k, v, A.attention_mask(info, info, window), scale=D**-0.5, softcap=softcap)
        return jnp.sum(out * weights), out

    def chunked(q, k, v):
        out = A.causal_chunked_attention(q, k, v, info, window, scale=D**-0.5, softcap=softcap, chunk=chunk)
        return jnp.sum(out * weights), out

    (_, want), g_want = jax.jit(jax.value_and_grad(whole, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    (_, got), g_got = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("implementation", ["xla", "ring"])
def test_training_attention_takes_causal_chunks_unless_the_row_is_context_sharded(monkeypatch, implementation):
    """With attn_query_chunk, the training forward (lnpo's einsum, or ring attention without a
    context axis) uses contiguous causal chunks; where the active mesh splits the row over a
    context axis the einsum keeps the strided chunks (each chunk spans the shards)."""
    calls = []
    real = A.causal_chunked_attention
    monkeypatch.setattr(A, "causal_chunked_attention", lambda *a, **kw: calls.append(kw["chunk"]) or real(*a, **kw))
    cfg = CFG.replace(compute_dtype="float32", attn_query_chunk=8, attn_implementation=implementation)
    model = M.Decoder(cfg, rngs=nnx.Rngs(0))
    ids = jnp.ones((2, 24), jnp.int32)
    model.hidden_states(ids)
    assert calls == [8]  # traced once: the layers are scanned
    if implementation == "xla":
        calls.clear()
        monkeypatch.setattr(A, "active_shards", lambda axes, shape, dim: 2 if dim == 1 else 1)
        model.hidden_states(ids)
        assert calls == []


CFG = M.ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                    compute_dtype="bfloat16")


def _hidden_and_grads(cfg, ids, seg, br, pos):
    model = M.Decoder(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    valid = (seg > 0)[..., None]

    def loss(p):
        h = nnx.merge(graphdef, p).hidden_states(ids, positions=pos, segment_ids=seg, branch_ids=br)
        return jnp.sum(jnp.where(valid, h.astype(jnp.float32), 0.0) ** 2), h

    (_, h), g = jax.value_and_grad(loss, has_aux=True)(params)
    return np.asarray(h, np.float32)[np.asarray(seg) > 0], [np.asarray(x, np.float64) for x in jax.tree.leaves(g)]


def _rel(a, b):
    """||a - b|| / ||b||; 0 when both are all zeros (the LM head's gradient here)."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def test_decoder_routes_training_attention_to_the_fused_kernel(monkeypatch):
    """attn_implementation='cudnn' sends the cache-free forward (and its backward) through
    fused_attention with that implementation; here JAX's XLA version of the same call stands
    in for cuDNN, and the model's outputs and gradients equal the einsum model's."""
    calls = []
    fused = A.fused_attention

    def stand_in(q, k, v, mask, *, scale, implementation):
        calls.append(implementation)
        return fused(q, k, v, mask, scale=scale, implementation="xla")

    monkeypatch.setattr(attention_layer, "fused_attention", stand_in)  # the name the Attention layer calls
    rng = np.random.default_rng(0)
    seg, br, pos = _mask_inputs()
    ids = jnp.asarray(rng.integers(1, 64, seg.shape), jnp.int32)
    args = (ids, jnp.asarray(seg), jnp.asarray(br), jnp.asarray(pos))
    h_ref, g_ref = _hidden_and_grads(CFG, *args)
    h, g = _hidden_and_grads(CFG.replace(attn_implementation="cudnn"), *args)
    assert calls and set(calls) == {"cudnn"}
    assert _rel(h, h_ref) < 1e-2
    for x, y in zip(g, g_ref):
        assert _rel(x, y) < 2e-2


@pytest.mark.parametrize("change,match", [
    (dict(attn_implementation="flash"), "attn_implementation 'flash' is not supported"),
    (dict(attn_implementation="cudnn", compute_dtype="float32"), "needs compute_dtype bfloat16"),
    (dict(attn_implementation="cudnn", attn_query_chunk=8), "attn_query_chunk"),
    (dict(attn_implementation="cudnn", attn_logit_softcap=50.0), "attn_logit_softcap"),
    (dict(attn_implementation="cudnn", head_dim=12), "head_dim"),
    (dict(attn_implementation="cudnn", head_dim=264), "head_dim"),
])
def test_attention_implementation_is_validated(change, match):
    with pytest.raises(ValueError, match=match):
        CFG.replace(**change)


@pytest.mark.skipif(not HAS_GPU, reason="cuDNN flash attention needs an NVIDIA GPU")
def test_cudnn_attention_matches_float32_einsum_on_gpu():
    """On a GPU: the model with cuDNN attention (bf16) is as close to the float32 einsum model
    as the bf16 einsum model is, in hidden states and in every parameter gradient."""
    rng = np.random.default_rng(1)
    seg, br, pos = _mask_inputs(T=23)
    ids = jnp.asarray(rng.integers(1, 64, seg.shape), jnp.int32)
    args = (ids, jnp.asarray(seg), jnp.asarray(br), jnp.asarray(pos))
    h32, g32 = _hidden_and_grads(CFG.replace(compute_dtype="float32"), *args)
    h16, g16 = _hidden_and_grads(CFG, *args)
    hcu, gcu = _hidden_and_grads(CFG.replace(attn_implementation="cudnn"), *args)
    assert np.isfinite(hcu).all()
    assert _rel(hcu, h32) < max(2 * _rel(h16, h32), 2e-2)
    for a, b, ref in zip(gcu, g16, g32):
        assert _rel(a, ref) < max(2 * _rel(b, ref), 3e-2)
