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

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lnpo.parallel import active_shards, constrain


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


#: The logical axes of q / k / v / attention outputs ``[B, T, H, D]``.
ACT_AXES = ("batch", "length", "act_heads", None)


def self_attention(
    q_BxTxHxD: jax.Array,
    k_BxTxKxD: jax.Array,
    v_BxTxKxD: jax.Array,
    info: TokenInfo,
    window: jax.Array | int,
    *,
    scale: float,
    softcap: float | None = None,
    query_chunk: int = 0,
) -> jax.Array:
    """lnpo's einsum attention of a row set over itself in row order (``info`` describes the
    queries and the keys): :func:`causal_chunked_attention` when ``query_chunk`` splits the row
    and the active mesh does not split it over a context axis, else
    :func:`dot_product_attention` with ``attention_mask(info, info, window)`` (strided query
    chunks, each spanning the shards, with ``query_chunk``)."""
    T = q_BxTxHxD.shape[1]
    if 0 < query_chunk < T and active_shards(ACT_AXES, q_BxTxHxD.shape, 1) == 1:
        return causal_chunked_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, info, window, scale=scale,
                                        softcap=softcap, chunk=query_chunk)
    mask = constrain(attention_mask(info, info, window), ("batch", "length", None))
    return dot_product_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, mask, scale=scale, softcap=softcap,
                                 query_chunk=query_chunk)


def causal_chunked_attention(
    q_BxTxHxD: jax.Array,
    k_BxTxKxD: jax.Array,
    v_BxTxKxD: jax.Array,
    info: TokenInfo,
    window: jax.Array | int,
    *,
    scale: float,
    softcap: float | None = None,
    chunk: int,
) -> jax.Array:
    """Self-attention in row order (queries and keys are the same ``T`` tokens, ``info``
    describes them, ``info.order`` increasing) in contiguous query chunks that see only
    the keys the causal order allows: chunk ``i`` holds queries ``[i c, (i+1) c)`` and
    attends keys ``[0, (i+1) c)``, its mask built from those tokens' ids
    (:func:`attention_mask`). The result is :func:`dot_product_attention`'s with
    ``attention_mask(info, info, window)``, including a query with no visible key (the
    plain average of all ``T`` values), while the scores computed fall from ``T^2`` to
    ``c^2 n (n + 1) / 2`` with ``n = ceil(T / c)`` chunks (58% of them at ``n = 6``).
    Each chunk runs under ``jax.checkpoint``, so the float32 scores are one chunk's
    ``[B, H, c, (i+1) c]`` at a time, as with ``query_chunk``. Returns ``[B, T, H, D]``
    in v's dtype.

    Contiguous chunks put each chunk on one shard of a context-sharded row; there,
    :func:`dot_product_attention`'s strided chunks (or ring attention) are the ones to use.
    """
    B, T, H, D = q_BxTxHxD.shape
    K = k_BxTxKxD.shape[2]
    outs, seen = [], []
    for start in range(0, T, chunk):
        # The whole q, k, v and ids go in and the chunk slices them inside the checkpoint, so what
        # the backward pass keeps is one reference to each array, not a copy of every key prefix.
        block = jax.checkpoint(functools.partial(_prefix_block, start=start, end=min(start + chunk, T),
                                                 scale=scale, softcap=softcap))
        out, visible = block(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, info, window)
        outs.append(out)
        seen.append(visible)
    out = jnp.concatenate(outs, axis=1).reshape(B, T, K, H // K, -1)
    # A query that sees no key: the whole row's plain average of v, as the softmax over T
    # all-masked scores gives in dot_product_attention (no gradient reaches its query).
    mean_v = jnp.mean(v_BxTxKxD.astype(jnp.float32), axis=1).astype(v_BxTxKxD.dtype)  # [B, K, Dv]
    visible = jnp.concatenate(seen, axis=1)[:, :, None, None, None]
    out = jnp.where(visible, out, mean_v[:, None, :, None, :])
    return out.reshape(B, T, H, -1)


def _prefix_block(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, info: TokenInfo, window, *, start: int, end: int, scale,
                  softcap):
    """Queries ``[start, end)`` of :func:`causal_chunked_attention` against keys ``[0, end)``:
    (out ``[B, end - start, H, Dv]``, bool ``[B, end - start]`` the query sees some key)."""
    def ids(a, lo):
        return None if a is None else a[:, lo:end]

    q_info = TokenInfo(ids(info.positions, start), ids(info.segments, start), ids(info.branches, start),
                       info.order[start:end])
    k_info = TokenInfo(ids(info.positions, 0), ids(info.segments, 0), ids(info.branches, 0), info.order[:end])
    mask = attention_mask(q_info, k_info, window)
    out = _attention(q_BxTxHxD[:, start:end], k_BxTxKxD[:, :end], v_BxTxKxD[:, :end], mask, scale=scale,
                     softcap=softcap)
    return out, mask.any(-1)


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
