"""lnpo.models.ring: ring attention over a context axis of simulated devices against lnpo's
einsum attention on one device, for every mask kind: outputs and gradients of q, k and v."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_helpers import result_of, run_python  # noqa: E402

SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from lnpo import parallel
from lnpo.models import attention_kernels as A
from lnpo.models.ring import ring_attention
assert jax.device_count() == 8, jax.devices()

T, D = 64, 8


def rows(kind):
    seg = np.zeros((2, T), np.int32); br = np.zeros((2, T), np.int32)
    pos = np.tile(np.arange(T, dtype=np.int32), (2, 1))
    if kind == "padded":
        seg[0, :41], seg[1, :] = 1, 1
    elif kind == "packed":  # sequences crossing the shards' 16-position boundaries, then padding
        seg[0, :23], seg[0, 23:37], seg[0, 37:60] = 1, 2, 3
        pos[0, :60] = np.r_[np.arange(23), np.arange(14), np.arange(23)]
        seg[1, :30], seg[1, 30:] = 1, 2
        pos[1] = np.r_[np.arange(30), np.arange(T - 30)]
    else:  # shared prompt: a prompt, then chosen (branch 1) and rejected (branch 2) continuing from it
        seg[0, :36], seg[0, 36:] = 1, 2
        br[0, 12:24], br[0, 24:36], br[0, 46:55], br[0, 55:] = 1, 2, 1, 2
        pos[0] = np.r_[np.arange(24), np.arange(12, 24), np.arange(19), np.arange(10, T - 45)]
        seg[1, :58] = 1
        br[1, 8:33], br[1, 33:58] = 1, 2
        pos[1, :58] = np.r_[np.arange(33), np.arange(8, 33)]
    return seg, (br if kind == "shared_prompt" else None), pos


out = {}
for kind, window, softcap, heads, kv_heads, mesh_shape, chunk in [
        ("padded", 0, None, 4, 2, (2, 1, 1, 4), 0),
        ("packed", 11, None, 4, 2, (2, 1, 1, 4), 0),   # sliding window over packed sequences
        ("shared_prompt", 0, None, 4, 2, (1, 1, 2, 4), 0),  # heads over a tensor axis too
        ("shared_prompt", 0, 5.0, 4, 1, (1, 1, 2, 4), 0),   # soft-capping; 1 kv head the tensor axis splits
        ("packed", 0, None, 4, 2, (1, 1, 1, 8), 0),         # 8 blocks of 8 positions
        ("shared_prompt", 0, None, 4, 2, (2, 1, 1, 4), 4)]:  # each shard's 16 queries in chunks of 4
    rng = np.random.default_rng(heads + 10 * kv_heads + window)
    seg, br, pos = rows(kind)
    info = A.TokenInfo(jnp.asarray(pos), jnp.asarray(seg), None if br is None else jnp.asarray(br),
                       jnp.arange(T, dtype=jnp.int32))
    q = jnp.asarray(rng.normal(size=(2, T, heads, D)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, T, kv_heads, D)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, T, kv_heads, D)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(2, T, heads, D)), jnp.float32) * jnp.asarray(seg > 0)[..., None, None]

    def reference(q, k, v):
        mask = A.attention_mask(info, info, window)
        return jnp.sum(A.dot_product_attention(q, k, v, mask, scale=0.3, softcap=softcap) * w)

    mesh = parallel.make_mesh(mesh_shape)

    def ring(q, k, v):
        with parallel.use_rules(mesh):
            return jnp.sum(ring_attention(q, k, v, info, jnp.int32(window), scale=0.3, softcap=softcap,
                                          query_chunk=chunk) * w)

    with parallel.use_rules(mesh):
        ring_out = jax.jit(lambda q, k, v: ring_attention(q, k, v, info, jnp.int32(window), scale=0.3,
                                                          softcap=softcap, query_chunk=chunk))(q, k, v)
    ref_out = A.dot_product_attention(q, k, v, A.attention_mask(info, info, window), scale=0.3, softcap=softcap)
    valid = seg > 0
    fn = jax.jit(jax.value_and_grad(ring, argnums=(0, 1, 2)))
    hlo = fn.lower(q, k, v).compile().as_text()
    got = fn(q, k, v)
    want = jax.jit(jax.value_and_grad(reference, argnums=(0, 1, 2)))(q, k, v)
    flat = lambda t: [np.asarray(x, np.float64).ravel().tolist() for x in jax.tree.leaves(t)]
    out[f"{kind} w{window} cap{softcap} kv{kv_heads} {mesh_shape} chunk{chunk}"] = {
        "out": [np.asarray(ref_out)[valid].ravel().tolist(), np.asarray(ring_out)[valid].ravel().tolist()],
        "value": [float(want[0]), float(got[0])], "grads": [flat(want[1]), flat(got[1])],
        "permute": "collective-permute" in hlo}
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_ring_attention_on_a_context_axis_equals_one_devices_attention_and_gradients(simulated_devices):
    """Rows of 64 positions split over a context axis of 4 (and 8): the output of every query that
    sees a key, a weighted sum of them and its gradients w.r.t. q, k and v equal the einsum
    attention of one device to fp32 rounding, for padded, packed (with a sliding window) and
    shared-prompt rows, GQA with heads over a tensor axis, soft-capping, and each shard's queries in
    chunks; the keys go round the ring as collective permutes."""
    result = result_of(run_python(SCRIPT, env_extra=simulated_devices(8)))
    assert len(result) == 6
    for name, r in result.items():
        assert r["permute"], name
        np.testing.assert_allclose(r["out"][1], r["out"][0], rtol=1e-5, atol=2e-6, err_msg=name)
        want, got = r["value"]  # a weighted sum of 4096 outputs with cancellation: its rounding is absolute
        assert abs(got - want) <= 1e-6 * np.abs(r["out"][0]).sum(), (name, want, got)
        for a, b in zip(*r["grads"]):
            a, b = np.asarray(a), np.asarray(b)
            assert np.linalg.norm(b - a) <= 1e-5 * max(np.linalg.norm(a), 1e-30), name


def test_ring_attention_without_a_mesh_is_the_einsum_attention():
    """Outside :func:`lnpo.parallel.use_rules` (one device), ring attention is exactly
    :func:`lnpo.models.attention_kernels.dot_product_attention` with the model's mask."""
    import jax.numpy as jnp

    from lnpo.models import attention_kernels as A
    from lnpo.models.ring import ring_attention

    rng = np.random.default_rng(0)
    T = 12
    seg = jnp.asarray(np.r_[np.ones(7), 2 * np.ones(3), np.zeros(2)][None].astype(np.int32))
    info = A.TokenInfo(jnp.asarray(np.r_[np.arange(7), np.arange(3), 0, 0][None].astype(np.int32)), seg, None,
                       jnp.arange(T, dtype=jnp.int32))
    q, k, v = (jnp.asarray(rng.normal(size=(1, T, h, 4)), jnp.float32) for h in (4, 2, 2))
    want = A.dot_product_attention(q, k, v, A.attention_mask(info, info, 0), scale=0.5)
    np.testing.assert_array_equal(np.asarray(ring_attention(q, k, v, info, 0, scale=0.5)), np.asarray(want))


def test_a_ring_query_chunk_that_does_not_divide_a_shard_is_one_line(tmp_path):
    """With 'ring' on a context axis, attn_query_chunk must divide each shard's positions: a
    ConfigError naming the field and the shard length, before anything is built."""
    from lnpo import config as config_lib
    from lnpo.errors import ConfigError

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_plan import _config, _model_dir

    config = _config(_model_dir(tmp_path), **{"mesh.shape": (1, 1, 1, 4), "model.attn_implementation": "ring",
                                              "model.attn_query_chunk": 48, "data.max_len": 512})
    with pytest.raises(ConfigError, match=r"attn_query_chunk: .* divide each context shard's 128 positions"):
        config_lib.validate(config, num_devices=4)
