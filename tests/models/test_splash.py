"""lnpo.models.splash: the Pallas splash kernel (interpret mode on CPU) against lnpo's einsum
attention, for every mask kind: outputs and gradients of q, k, v; and the Decoder's route."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lnpo.models as M
from lnpo.errors import ModelError
from lnpo.models import attention_kernels as A
from lnpo.models import splash as S
from lnpo.models.splash import splash_attention

T = 260  # pads to 384 = three 128-blocks: the kernel's block skipping and carries across blocks


def _rows(kind: str, T: int = T):
    """(segments, branches or None, positions) of two rows of one layout kind."""
    seg = np.zeros((2, T), np.int32)
    br = np.zeros((2, T), np.int32)
    pos = np.tile(np.arange(T, dtype=np.int32), (2, 1))
    if kind == "padded":
        seg[0, :200], seg[1, :] = 1, 1
    elif kind == "packed":  # three sequences, positions restart, then padding
        seg[0, :90], seg[0, 90:150], seg[0, 150:240] = 1, 2, 3
        pos[0, :240] = np.r_[np.arange(90), np.arange(60), np.arange(90)]
        seg[1, :130], seg[1, 130:] = 1, 2
        pos[1] = np.r_[np.arange(130), np.arange(T - 130)]
    elif kind == "shared_prompt":  # row 0: two groups packed; row 1: one group, then padding
        seg[0, :140], seg[0, 140:] = 1, 2
        br[0, 60:100], br[0, 100:140], br[0, 180:220], br[0, 220:] = 1, 2, 1, 2
        pos[0] = np.r_[np.arange(100), np.arange(60, 100), np.arange(80), np.arange(40, T - 180)]
        seg[1, :230] = 1
        br[1, 30:150], br[1, 150:230] = 1, 2
        pos[1, :230] = np.r_[np.arange(150), np.arange(30, 110)]
    else:
        raise AssertionError(kind)
    return seg, (br if kind == "shared_prompt" else None), pos


@pytest.mark.slow
@pytest.mark.parametrize("kind,window,softcap,heads,kv_heads", [
    ("padded", 0, None, 4, 2),
    ("packed", 0, None, 4, 4),
    ("packed", 37, None, 4, 2),  # sliding window over packed sequences
    ("shared_prompt", 0, None, 4, 2),
    ("shared_prompt", 0, 5.0, 6, 1),  # soft-capping, multi-query
])
def test_splash_equals_einsum_attention_and_its_gradients(kind, window, softcap, heads, kv_heads):
    """For every query with a key to see, splash's output equals dot_product_attention's, and so
    do the gradients of a loss over those queries w.r.t. q, k and v (float32, 1e-5)."""
    rng = np.random.default_rng(heads + 10 * kv_heads + window)
    D = 16
    seg, br, pos = _rows(kind)
    info = A.TokenInfo(jnp.asarray(pos), jnp.asarray(seg), None if br is None else jnp.asarray(br),
                       jnp.arange(T, dtype=jnp.int32))
    mask = A.attention_mask(info, info, window)
    q = jnp.asarray(rng.normal(size=(2, T, heads, D)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, T, kv_heads, D)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, T, kv_heads, D)), jnp.float32)
    valid = seg > 0
    w = jnp.asarray(rng.normal(size=q.shape) * valid[..., None, None], jnp.float32)  # padding queries: no loss
    args = (jnp.asarray(seg), None if br is None else jnp.asarray(br))

    def ref(q, k, v):
        return A.dot_product_attention(q, k, v, mask, scale=D**-0.5, softcap=softcap)

    def got(q, k, v):
        return splash_attention(q, k, v, *args, window=window, scale=D**-0.5, softcap=softcap)

    want_out, out = ref(q, k, v), jax.jit(got)(q, k, v)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(want_out)[valid], rtol=1e-5, atol=1e-5)
    want = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2))(q, k, v)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(got(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    for name, g, g_ref in zip("qkv", grads, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-5, err_msg=name)


def test_splash_refuses_sliding_windows_with_branches():
    seg, br, _ = _rows("shared_prompt")
    x = jnp.zeros((2, T, 2, 8))
    with pytest.raises(ModelError, match="sliding-window layers with shared-prompt branches"):
        splash_attention(x, x, x, jnp.asarray(seg), jnp.asarray(br), window=4, scale=1.0)


def test_splash_takes_no_query_chunks():
    with pytest.raises(ValueError, match="'splash' never writes the scores; attn_query_chunk must be 0"):
        M.ModelConfig(attn_implementation="splash", attn_query_chunk=64)


CFG = M.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    sliding_window=37, layer_types=("sliding_attention", "full_attention"))


def _hidden_and_grads(cfg, ids, seg, br, pos):
    model = M.Decoder(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(*seg.shape, cfg.hidden_size)) * (seg > 0)[..., None],
                    jnp.float32)  # padding positions: no loss

    @jax.jit
    def run(p):
        def loss(p):
            h = nnx.merge(graphdef, p).hidden_states(ids, positions=pos, segment_ids=seg, branch_ids=br)
            return jnp.sum(h * w), h
        return jax.value_and_grad(loss, has_aux=True)(p)

    (_, h), g = run(params)
    return np.asarray(h)[np.asarray(seg) > 0], jax.tree.leaves(g)


@pytest.mark.slow
@pytest.mark.parametrize("kind,remat", [("packed", "none"), ("shared_prompt", "full")])
def test_decoder_with_splash_attention_matches_the_einsum_model(kind, remat, monkeypatch):
    """attn_implementation='splash' routes the Decoder's training forward (and backward) through
    the kernel: hidden states and every parameter gradient equal the einsum model's (float32),
    with a sliding-window and a global layer (packed) or shared-prompt branches."""
    seg, br, pos = _rows(kind)
    cfg = (CFG if br is None else CFG.replace(sliding_window=None, layer_types=None)).replace(remat=remat)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 64, seg.shape), jnp.int32)
    args = (ids, jnp.asarray(seg), None if br is None else jnp.asarray(br), jnp.asarray(pos))
    h_ref, g_ref = _hidden_and_grads(cfg, *args)
    calls = []
    monkeypatch.setattr(S, "splash_attention",
                        lambda *a, **kw: calls.append(kw["window"]) or splash_attention(*a, **kw))
    h, g = _hidden_and_grads(cfg.replace(attn_implementation="splash"), *args)
    assert sorted(set(calls)) == sorted(set(cfg.layer_windows))  # each layer's own static mask
    np.testing.assert_allclose(h, h_ref, rtol=1e-4, atol=1e-5)
    for x, y in zip(g, g_ref):  # float32 sums in another order: relative to the gradient's norm
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.linalg.norm(x - y) <= 1e-5 * max(np.linalg.norm(y), 1e-30)


SHARDED = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "tests/models")
from test_splash import _rows, T
from lnpo import parallel
from lnpo.models import attention_kernels as A
from lnpo.models.splash import sharded_splash_attention
assert jax.device_count() == 8
out = {}
# (2, 2, 2): 1 kv head over tensor 2; (2, 1, 1, 4): each row's queries over a context axis of 4
for mesh_shape, heads, kv in (((2, 1, 2), 4, 2), ((2, 2, 2), 4, 1), ((2, 1, 1, 4), 4, 2)):
    for kind in ("packed", "shared_prompt"):
        seg, br, pos = _rows(kind)
        seg, pos = np.concatenate([seg, seg[::-1]]), np.concatenate([pos, pos[::-1]])
        br = None if br is None else np.concatenate([br, br[::-1]])
        rng = np.random.default_rng(0)
        q = jnp.asarray(rng.normal(size=(4, T, heads, 16)), jnp.float32)
        k, v = (jnp.asarray(rng.normal(size=(4, T, kv, 16)), jnp.float32) for _ in range(2))
        info = A.TokenInfo(jnp.asarray(pos), jnp.asarray(seg), None if br is None else jnp.asarray(br), jnp.arange(T))
        w = jnp.asarray(rng.normal(size=q.shape) * (seg > 0)[..., None, None], jnp.float32)
        windows, window = ((0,), 0) if br is not None else ((0, 37), 37)
        mask = A.attention_mask(info, info, window)
        ref = lambda q, k, v: jnp.sum(A.dot_product_attention(q, k, v, mask, scale=0.25) * w)
        mesh = parallel.make_mesh(mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])

        def got(q, k, v):
            with parallel.use_rules(mesh):
                return jnp.sum(sharded_splash_attention(q, k, v, jnp.asarray(seg), None if br is None else
                                                        jnp.asarray(br), windows=windows, window=jnp.int32(window),
                                                        scale=0.25) * w)

        want = jax.value_and_grad(ref, argnums=(0, 1, 2))(q, k, v)
        have = jax.jit(jax.value_and_grad(got, argnums=(0, 1, 2)))(q, k, v)
        out[f"{mesh_shape} {kind}"] = [float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(a))
                                       for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(have))]
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_sharded_splash_equals_einsum_on_data_tensor_and_context_meshes(simulated_devices):
    """Under a mesh (lnpo.parallel.use_rules) the kernel runs per shard (shard_map over rows and
    heads, kv heads repeated when the tensor axis does not divide them; over a context axis each
    shard's queries against the row's gathered keys with its slice of the block mask): the loss
    and the gradients of q, k, v equal the einsum's, packed (with a window) and shared-prompt."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, **simulated_devices(8), PYTHONPATH=repo)
    proc = subprocess.run([sys.executable, "-c", SHARDED], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert len(result) == 6
    for case, errors in result.items():
        assert max(errors) < 1e-5, (case, errors)
