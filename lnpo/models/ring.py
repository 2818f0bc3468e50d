"""Ring attention over the mesh's ``context`` axis: each chip keeps its slice of a row's
queries and passes its keys and values around the ring, so no chip ever holds a whole row.

With ``c`` context shards, shard ``i`` holds positions ``[i T/c, (i+1) T/c)`` of each of its rows:
queries, keys, values and their mask inputs (:class:`~lnpo.models.attention_kernels.TokenInfo`). In
``c`` steps it attends its queries to one block of ``T/c`` keys, then hands that block to shard
``i + 1`` (``jax.lax.ppermute``) and receives one from shard ``i - 1``. The softmax over all
``T`` keys is assembled online (flash attention's running maximum ``m``, normalizer ``l`` and
unnormalized output ``o``, all float32)::

    s_j   = scale * q k_j^T  (soft-capped; masked to -inf)     m' = max(m, max_j s_j)
    l'    = l exp(m - m') + sum_j exp(s_j - m')                o' = o exp(m - m') + exp(s_j - m') v_j
    out   = o / l    after the c-th block

A block whose keys the mask hides from every query of the shard (the causal future, another
packed segment) is skipped. Each step is rematerialized in the backward pass
(``jax.checkpoint``), so the saved state per layer is the running ``(m, l, o)`` and the key
blocks, never a score matrix over the row: per chip the float32 scores are
``[B, H, T/c, T/c]`` for one block at a time, against ``[B, H, T/c, T]`` when the keys are
all-gathered (``attn_implementation="xla"`` on a context axis).

The mask is the model's own (:func:`~lnpo.models.attention_kernels.attention_mask`), computed per block
from the blocks' token ids, so packed segments, the shared-prompt layout's branches, sliding
windows and the causal order all hold across shards. A query that sees no key at all (padding)
gets zeros, which no consumer reads (its targets are masked).

Without an active mesh (:func:`lnpo.parallel.use_rules`) or with a context axis of 1, it is the
einsum attention over the whole row (:func:`~lnpo.models.attention_kernels.self_attention`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from lnpo.models.attention_kernels import ACT_AXES, TokenInfo, attention_mask, self_attention
from lnpo.parallel import active_mesh_rules, active_shards, logical_to_spec, spec_entry_axes

_NEG = -1e30  # the running maximum before any visible key; exp(_NEG - m) underflows to 0


def ring_attention(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array, info: TokenInfo,
                   window: jax.Array | int, *, scale: float, softcap: float | None = None,
                   query_chunk: int = 0) -> jax.Array:
    """Self-attention of one row set in row order (queries and keys are the same tokens, ``info``
    describes them) with the keys and values rotated around the active mesh's context axis.
    ``query_chunk`` > 0 attends each shard's queries to a block in chunks of that many positions
    (when it divides the shard's ``T / c``), one chunk's scores ``[B, H, chunk, T/c]`` at a time.
    Returns ``[B, T, H, D]`` in v's dtype; see the module docstring."""
    if active_shards(ACT_AXES, q_BxTxHxD.shape, 1) > 1:
        mesh, rules = active_mesh_rules()
        spec = logical_to_spec(ACT_AXES, rules, shape=q_BxTxHxD.shape, mesh_shape=dict(mesh.shape))
        return _ring_on_mesh(mesh, spec, q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, info, window, scale=scale,
                             softcap=softcap, query_chunk=query_chunk)
    return self_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, info, window, scale=scale, softcap=softcap,
                          query_chunk=query_chunk)


def _ring_on_mesh(mesh, spec, q, k, v, info: TokenInfo, window, *, scale, softcap, query_chunk):
    rows, context, heads = spec[0], spec[1], spec[2]
    axes = spec_entry_axes(context)
    shards = int(np.prod([mesh.shape[a] for a in axes]))
    head_shards = int(np.prod([mesh.shape[a] for a in spec_entry_axes(heads)]))
    if k.shape[2] % head_shards:  # kv heads the axis does not divide: one copy per query head
        k, v = (jnp.repeat(x, q.shape[2] // x.shape[2], axis=2) for x in (k, v))
    branches = info.branches if info.branches is not None else jnp.zeros_like(info.segments)
    has_branches = info.branches is not None
    act, ids = P(rows, context, heads, None), P(rows, context)
    body = functools.partial(_ring_shard, axis=axes if len(axes) > 1 else axes[0], shards=shards, scale=scale,
                             softcap=softcap, has_branches=has_branches, query_chunk=query_chunk)
    return jax.shard_map(body, mesh=mesh, in_specs=(act, act, act, ids, ids, ids, P(context), P()),
                         out_specs=act, check_vma=False)(
        q, k, v, info.positions, info.segments, branches, info.order, jnp.asarray(window, jnp.int32))


def _ring_shard(q, k, v, positions, segments, branches, order, window, *, axis, shards: int, scale, softcap,
                has_branches: bool, query_chunk: int):
    """One shard's queries against the ``shards`` key blocks that pass through it."""
    B, T, H, D = q.shape
    K = k.shape[2]
    n = T // query_chunk if 0 < query_chunk < T and T % query_chunk == 0 else 1
    # Queries (and their running statistics) as n chunks of T / n contiguous positions.
    qs = q.reshape(B, n, T // n, K, H // K, D).transpose(1, 0, 2, 3, 4, 5)
    q_infos = (positions.reshape(B, n, -1).transpose(1, 0, 2), segments.reshape(B, n, -1).transpose(1, 0, 2),
               branches.reshape(B, n, -1).transpose(1, 0, 2), order.reshape(n, -1))
    update = jax.checkpoint(functools.partial(_block_update, window=window, scale=scale, softcap=softcap,
                                              has_branches=has_branches))
    perm = [(i, (i + 1) % shards) for i in range(shards)]

    def attend(stats, block):
        return jax.lax.map(lambda x: update(x[0], x[1], x[2], block), (stats, qs, q_infos))

    def step(carry, _):
        stats, block = carry
        stats = attend(stats, block)
        block = tuple(jax.lax.ppermute(x, axis, perm) for x in block)
        return (stats, block), None

    c = T // n
    stats = (jnp.full((n, B, K, H // K, c), _NEG, jnp.float32), jnp.zeros((n, B, K, H // K, c), jnp.float32),
             jnp.zeros((n, B, K, H // K, c, v.shape[-1]), jnp.float32))
    block = (k, v, positions, segments, branches, order)
    # The last block is attended without handing it on (its rotation would be discarded).
    (stats, block), _ = jax.lax.scan(step, (stats, block), None, length=shards - 1)
    m, normalizer, o = attend(stats, block)
    out = o / jnp.where(normalizer > 0, normalizer, 1.0)[..., None]  # [n, B, K, G, c, Dv]
    return out.transpose(1, 0, 4, 2, 3, 5).reshape(B, T, H, -1).astype(v.dtype)


def _block_update(stats, q_BxTxKxGxD, q_info, block, *, window, scale, softcap, has_branches: bool):
    """The online softmax's ``(m, l, o)`` of some queries after one more block of keys; a block
    the mask hides from all of them leaves the statistics as they are."""
    m, normalizer, o = stats
    kb, vb, kpos, kseg, kbr, kord = block
    qpos, qseg, qbr, qord = q_info
    mask = attention_mask(TokenInfo(qpos, qseg, qbr if has_branches else None, qord),
                          TokenInfo(kpos, kseg, kbr if has_branches else None, kord), window)

    def update(_):
        s = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxD, kb, preferred_element_type=jnp.float32) * scale
        if softcap is not None:
            s = jnp.tanh(s / softcap) * softcap
        visible = mask[:, None, None]
        s = jnp.where(visible, s, _NEG)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.where(visible, jnp.exp(s - m_new[..., None]), 0.0)
        correction = jnp.exp(m - m_new)
        o_new = o * correction[..., None] + jnp.einsum("bkgts,bskd->bkgtd", p.astype(vb.dtype), vb,
                                                       preferred_element_type=jnp.float32)
        return m_new, normalizer * correction + p.sum(-1), o_new

    return jax.lax.cond(mask.any(), update, lambda _: (m, normalizer, o), None)
