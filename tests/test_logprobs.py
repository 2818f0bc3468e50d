"""Chunked log-probs equal the naive log_softmax ones (values and gradients) and
never hold float32 [B, T, V] logits; per-sequence sums and counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnpo.logprobs import sequence_logps, token_logps

B, T, D, V = 2, 20, 16, 50


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(V, D)) * 0.5, jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32)
    return hidden, w, targets


def _unembed(w):
    return lambda h: jnp.einsum("btd,vd->btv", h, w)


def _naive(hidden, w, targets):
    logp = jax.nn.log_softmax(_unembed(w)(hidden), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("chunk_size", [7, 20])  # 7 does not divide T (padding path)
def test_values_and_gradients_match_naive(chunk_size):
    hidden, w, targets = _inputs()
    weights = jnp.asarray(np.random.default_rng(9).normal(size=(B, T)), jnp.float32)

    def loss(fn):
        return lambda h, w: jnp.sum(fn(h, w) * weights)

    chunked = lambda h, w: token_logps(h, targets, _unembed(w), chunk_size=chunk_size)  # noqa: E731
    naive = lambda h, w: _naive(h, w, targets)  # noqa: E731
    def value_and_grads(fn):
        return jax.jit(lambda h, w: (fn(h, w), jax.grad(loss(fn), argnums=(0, 1))(h, w)))(hidden, w)

    (v_chunked, g_chunked), (v_naive, g_naive) = value_and_grads(chunked), value_and_grads(naive)
    assert v_chunked.shape == (B, T) and v_chunked.dtype == jnp.float32
    np.testing.assert_allclose(v_chunked, v_naive, atol=1e-5, rtol=0)
    for a, b in zip(g_chunked, g_naive):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def _all_shapes(jaxpr):
    """Shapes of every intermediate value, sub-jaxprs (scan / remat bodies) included."""
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            yield tuple(getattr(v.aval, "shape", ()))
        for p in eqn.params.values():
            subs = p if isinstance(p, (list, tuple)) else [p]
            for sub in subs:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _all_shapes(inner)


def test_never_materializes_full_logits():
    hidden, w, targets = _inputs()
    f = lambda h, w: jnp.sum(token_logps(h, targets, _unembed(w), chunk_size=4))  # noqa: E731
    shapes = set(_all_shapes(jax.make_jaxpr(jax.value_and_grad(f, argnums=(0, 1)))(hidden, w).jaxpr))
    assert (B, 4, V) in shapes  # one chunk's logits
    assert not any(len(s) >= 2 and s[-1] == V and int(np.prod(s)) >= B * T * V for s in shapes), shapes
    # the naive version does materialize them, so the check can fail
    g = lambda h, w: jnp.sum(_naive(h, w, targets))  # noqa: E731
    naive_shapes = set(_all_shapes(jax.make_jaxpr(jax.value_and_grad(g, argnums=(0, 1)))(hidden, w).jaxpr))
    assert (B, T, V) in naive_shapes


def test_sequence_logps_sums_counts_and_drops_minus_one():
    lp = jnp.array([[-1.0, -2.0, -3.0, -4.0], [-5.0, -6.0, -7.0, -8.0]])
    idx = jnp.array([[0, 0, -1, 2], [2, -1, 1, 7]])  # 7 is out of range: dropped too
    sums, counts = jax.jit(sequence_logps, static_argnums=2)(lp, idx, 4)
    np.testing.assert_allclose(sums, [-3.0, -7.0, -9.0, 0.0])
    np.testing.assert_array_equal(counts, [2, 1, 2, 0])
    assert sums.dtype == jnp.float32 and counts.dtype == jnp.int32
    grads = jax.jit(jax.grad(lambda x: sequence_logps(x, idx, 4)[0].sum()))(lp)
    np.testing.assert_array_equal(grads, (idx >= 0) & (idx < 4))
