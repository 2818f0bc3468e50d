"""Attention math on arrays, shared by the model's attention layer and ring attention: the mask
from per-token ids, lnpo's einsum softmax attention (optionally in query chunks) and the fused
``jax.nn.dot_product_attention`` route.

The mask between query q and key k of one row (docs/architecture.md):
``order[k] <= order[q]`` (row / cache-slot order), ``segment[k] == segment[q] != 0``,
``branch[k] == 0 or branch[k] == branch[q]``, and on sliding-window layers
``position[q] - position[k] < window``. It is computed inside attention from
``[B, T]`` ids, never passed in as ``[B, T, T]``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class TokenInfo(NamedTuple):
    """Per-token mask inputs of one side (queries or keys) of attention.

    positions, segments: int32 ``[B, N]``; branches: int32 ``[B, N]`` or None
    (no branch rule); order: int32 ``[N]`` row order / cache slot of each token.
    """

    positions: jax.Array
    segments: jax.Array
    branches: jax.Array | None
    order: jax.Array


def attention_mask(q: TokenInfo, k: TokenInfo, window: jax.Array | int) -> jax.Array:
    """bool ``[B, T, S]``: may query t attend to key s. ``window`` <= 0 means global."""
    allowed = k.order[None, None, :] <= q.order[None, :, None]
    allowed &= (k.segments[:, None, :] == q.segments[:, :, None]) & (k.segments[:, None, :] != 0)
    if q.branches is not None and k.branches is not None:
        kb = k.branches[:, None, :]
        allowed &= (kb == 0) | (kb == q.branches[:, :, None])
    dpos = q.positions[:, :, None] - k.positions[:, None, :]
    allowed &= (window <= 0) | (dpos < window)
    return allowed


def dot_product_attention(
    q_BxTxHxD: jax.Array,
    k_BxSxKxD: jax.Array,
    v_BxSxKxD: jax.Array,
    mask_BxTxS: jax.Array,
    *,
    scale: float,
    softcap: float | None = None,
    query_chunk: int = 0,
) -> jax.Array:
    """Softmax attention with GQA (H query heads share K kv heads). Scores and
    softmax in float32; returns ``[B, T, H, D]`` in v's dtype. A query with no
    visible key (padding) gets the plain average of v: finite, and ignored by
    every consumer (its targets are masked).

    ``query_chunk`` > 0 (and < T) computes the queries in chunks of that many
    positions (strided: chunk i holds queries ``i, i + n, ...``), one chunk at a time
    under ``jax.checkpoint`` (the backward pass recomputes each chunk's scores): the
    float32 scores / probabilities are
    ``[B, H, chunk, S]`` instead of ``[B, H, T, S]``. Each query's softmax is its
    own, so the result is the same computation, in pieces."""
    T = q_BxTxHxD.shape[1]
    if 0 < query_chunk < T:
        return _chunked_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS, scale=scale, softcap=softcap,
                                  chunk=int(query_chunk))
    return _attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS, scale=scale, softcap=softcap)


def fused_attention(
    q_BxTxHxD: jax.Array,
    k_BxSxKxD: jax.Array,
    v_BxSxKxD: jax.Array,
    mask_BxTxS: jax.Array,
    *,
    scale: float,
    implementation: str,
) -> jax.Array:
    """The same attention as :func:`dot_product_attention` for self-attention in
    row order (query t and key t are the same token, so the mask is causal), through
    ``jax.nn.dot_product_attention(implementation=...)``: ``"cudnn"`` is cuDNN's
    fused flash attention, which skips the causal upper triangle and takes the rest
    of the mask as an additive ``[B, 1, T, S]`` bias (0 or a large negative);
    ``"xla"`` is JAX's reference of the same call. GQA is native (H query heads
    over K kv heads); returns ``[B, T, H, D]`` in q's dtype. An odd T gets one masked
    position appended (cuDNN's training kernels with a bias need even lengths)."""
    T = q_BxTxHxD.shape[1]
    if T % 2:
        pad = lambda x: jnp.pad(x, [(0, 0), (0, 1)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
        q_BxTxHxD, k_BxSxKxD, v_BxSxKxD = pad(q_BxTxHxD), pad(k_BxSxKxD), pad(v_BxSxKxD)
        mask_BxTxS = jnp.pad(mask_BxTxS, ((0, 0), (0, 1), (0, 1)))  # False: the new key is never seen
    out = jax.nn.dot_product_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask=mask_BxTxS[:, None], scale=scale,
                                       is_causal=True, implementation=implementation)
    return out[:, :T]


def _chunked_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS, *, scale, softcap, chunk: int):
    B, T, H, D = q_BxTxHxD.shape
    n = -(-T // chunk)
    pad = n * chunk - T  # padded queries see no key (mask False): finite, sliced off below
    # Chunk i holds queries i, n + i, 2n + i, ...: with the queries split over a context axis
    # every chunk takes chunk / context of them from each shard, so no chunk gathers the row.
    q = jnp.pad(q_BxTxHxD, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(B, chunk, n, H, D).transpose(2, 0, 1, 3, 4)
    m = jnp.pad(mask_BxTxS, ((0, 0), (0, pad), (0, 0))).reshape(B, chunk, n, -1).transpose(2, 0, 1, 3)
    f = jax.checkpoint(lambda qm: _attention(qm[0], k_BxSxKxD, v_BxSxKxD, qm[1], scale=scale, softcap=softcap))
    out = jax.lax.map(f, (q, m))  # [n, B, chunk, H, Dv]
    return out.transpose(1, 2, 0, 3, 4).reshape(B, n * chunk, H, -1)[:, :T]


def _attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS, *, scale, softcap):
    B, T, H, D = q_BxTxHxD.shape
    K = k_BxSxKxD.shape[2]
    q = q_BxTxHxD.reshape(B, T, K, H // K, D)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k_BxSxKxD, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        scores = jnp.tanh(scores / softcap) * softcap
    scores = jnp.where(mask_BxTxS[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v_BxSxKxD.dtype), v_BxSxKxD)
    return out.reshape(B, T, H, D)
