"""Per-token and per-sequence log-probs without materializing ``[B, T, V]`` float32 logits.

``token_logps`` splits the sequence into chunks of ``chunk_size`` positions (strided:
chunk i holds positions ``i, i + n, i + 2n, ...``) and
runs each chunk's unembed + log-softmax under ``jax.checkpoint`` inside a
``jax.lax.map`` loop: the forward pass holds one chunk's ``[B, C, V]`` logits at a
time, and the backward pass recomputes them chunk by chunk instead of storing
them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp


def _chunk_logps(unembed: Callable[[jax.Array], jax.Array], with_log_sum_sq: bool):
    @jax.checkpoint
    def f(h_BxCxD: jax.Array, t_BxC: jax.Array):
        logits = unembed(h_BxCxD).astype(jnp.float32)  # [B, C, V]
        lse = jax.nn.logsumexp(logits, axis=-1)
        target = jnp.take_along_axis(logits, t_BxC[..., None], axis=-1)[..., 0]
        if not with_log_sum_sq:
            return target - lse
        # log sum_v p_v^2 = logsumexp(2 z) - 2 logsumexp(z); no gradient (WPO's weights are constants).
        log_sum_sq = jax.lax.stop_gradient(jax.nn.logsumexp(2.0 * logits, axis=-1) - 2.0 * lse)
        return target - lse, log_sum_sq

    return f


def token_logps(
    hidden_BxTxD: jax.Array,
    targets_BxT: jax.Array,
    unembed: Callable[[jax.Array], jax.Array],
    *,
    chunk_size: int = 256,
    with_log_sum_sq: bool = False,
):
    """float32 ``[B, T]``: ``log softmax(unembed(hidden))[b, t, targets[b, t]]``.

    unembed: ``[B, C, D] -> [B, C, V]`` logits (e.g. ``model.unembed``).
    chunk_size: positions per chunk (T is padded up to a multiple of it).
    Targets where there is none (e.g. 0) give finite values that callers mask.
    with_log_sum_sq: also return ``log sum_v p_v^2`` per position (float32
    ``[B, T]``, under stop_gradient; WPO's alignment term), from the same chunk's
    logits: ``(token_logps, log_sum_sq)``.
    """
    B, T, D = hidden_BxTxD.shape
    C = max(1, min(int(chunk_size), T))
    n = -(-T // C)
    pad = n * C - T
    targets = jnp.asarray(targets_BxT, jnp.int32)
    h = jnp.pad(hidden_BxTxD, ((0, 0), (0, pad), (0, 0)))
    t = jnp.pad(targets, ((0, 0), (0, pad)))
    # Chunk i holds positions i, n + i, 2n + i, ...: a chunk takes C / context positions from
    # each context shard of a row split over the context axis, so no chunk gathers the row.
    h_chunks = h.reshape(B, C, n, D).transpose(2, 0, 1, 3)  # [n, B, C, D]
    t_chunks = t.reshape(B, C, n).transpose(2, 0, 1)  # [n, B, C]
    f = _chunk_logps(unembed, with_log_sum_sq)
    out = jax.lax.map(lambda xs: f(*xs), (h_chunks, t_chunks))  # [n, B, C] (each output)
    unchunk = lambda o: o.transpose(1, 2, 0).reshape(B, n * C)[:, :T]  # noqa: E731
    return tuple(unchunk(o) for o in out) if with_log_sum_sq else unchunk(out)


def sequence_logps(
    token_logps_BxT: jax.Array, seq_index_BxT: jax.Array, num_sequences: int
) -> tuple[jax.Array, jax.Array]:
    """Masked sums and counts per sequence: (sums float32 ``[N]``, counts int32 ``[N]``).

    seq_index_BxT: the sequence each position's target belongs to; -1 (or any
    index outside ``[0, N)``) means "no target here" and is dropped.
    """
    idx = jnp.asarray(seq_index_BxT, jnp.int32).reshape(-1)
    valid = (idx >= 0) & (idx < num_sequences)
    seg = jnp.where(valid, idx, num_sequences)  # an overflow bucket, sliced off below
    lp = jnp.where(valid, token_logps_BxT.reshape(-1).astype(jnp.float32), 0.0)
    sums = jax.ops.segment_sum(lp, seg, num_segments=num_sequences + 1)[:num_sequences]
    counts = jax.ops.segment_sum(valid.astype(jnp.int32), seg, num_segments=num_sequences + 1)[:num_sequences]
    return sums, counts


def target_rank(seq_index_BxT: jax.Array, num_sequences: int) -> jax.Array:
    """int32 ``[B, T]``: each target's index among its sequence's targets (0 for the
    first completion token), -1 where there is no target.

    A sequence's targets are contiguous and in order in one row in every layout
    (docs/architecture.md), so the rank is the flat position minus the sequence's first.
    """
    idx = jnp.asarray(seq_index_BxT, jnp.int32)
    flat = idx.reshape(-1)
    valid = (flat >= 0) & (flat < num_sequences)
    seg = jnp.where(valid, flat, num_sequences)
    pos = jnp.arange(flat.shape[0], dtype=jnp.int32)
    first = jax.ops.segment_min(pos, seg, num_segments=num_sequences + 1)
    return jnp.where(valid, pos - first[seg], -1).reshape(idx.shape)


def _pair_min(counts_N: jax.Array) -> jax.Array:
    """``[N]``: min(|y_w|, |y_l|) of each sequence's pair (sequences 2i, 2i+1)."""
    shared = jnp.minimum(counts_N[0::2], counts_N[1::2])
    return jnp.repeat(shared, 2)


def shared_mask(seq_index_BxT: jax.Array, counts_N: jax.Array) -> jax.Array:
    """bool ``[B, T]``: the target is among the first ``min(|y_w|, |y_l|)`` of its
    sequence (LD-DPO's shared part). ``counts_N`` from :func:`sequence_logps`, N even."""
    n = counts_N.shape[0]
    rank = target_rank(seq_index_BxT, n)
    limit = _pair_min(counts_N)[jnp.clip(seq_index_BxT, 0, n - 1)]
    return (rank >= 0) & (rank < limit)


def sampled_mask(seq_index_BxT: jax.Array, counts_N: jax.Array, key: jax.Array) -> jax.Array:
    """bool ``[B, T]``: ``min(|y_w|, |y_l|)`` targets of each sequence drawn uniformly
    without replacement (SamPO): the ones with the smallest of iid uniform scores
    ``jax.random.uniform(key, [B, T])`` within their sequence (all of the shorter
    one's). Deterministic given ``key``; jit-friendly (one sort of B*T entries)."""
    n = counts_N.shape[0]
    idx = jnp.asarray(seq_index_BxT, jnp.int32)
    flat = idx.reshape(-1)
    valid = (flat >= 0) & (flat < n)
    seg = jnp.where(valid, flat, n)
    u = jax.random.uniform(key, flat.shape)
    pos = jnp.arange(flat.shape[0], dtype=jnp.int32)
    seg_sorted, _, pos_sorted = jax.lax.sort((seg, u, pos), num_keys=2)
    sizes = jax.ops.segment_sum(jnp.ones_like(seg), seg, num_segments=n + 1)
    start = jnp.cumsum(sizes) - sizes  # first sorted slot of each sequence
    rank_sorted = jnp.arange(flat.shape[0], dtype=jnp.int32) - start[seg_sorted]
    limit = jnp.concatenate([_pair_min(counts_N), jnp.zeros((1,), counts_N.dtype)])
    chosen_sorted = rank_sorted < limit[seg_sorted]
    return jnp.zeros(flat.shape, bool).at[pos_sorted].set(chosen_sorted).reshape(idx.shape)


def masked_sequence_sums(token_logps_BxT: jax.Array, mask_BxT: jax.Array, seq_index_BxT: jax.Array,
                         num_sequences: int) -> jax.Array:
    """float32 ``[N]``: per-sequence sums of ``token_logps`` over the positions where ``mask`` holds."""
    sums, _ = sequence_logps(jnp.where(mask_BxT, token_logps_BxT, 0.0), seq_index_BxT, num_sequences)
    return sums


def batch_token_logps(model, batch: Mapping[str, jax.Array], chunk_size: int = 256, with_log_sum_sq: bool = False):
    """float32 ``[R, T]`` target log-probs of one micro-batch in the layout of
    docs/architecture.md (keys input_ids, positions, segment_ids, branch_ids, targets);
    ``with_log_sum_sq``: ``(token_logps, log_sum_sq)`` as :func:`token_logps`."""
    hidden = model.hidden_states(
        batch["input_ids"],
        positions=batch.get("positions"),
        segment_ids=batch.get("segment_ids"),
        branch_ids=batch.get("branch_ids"),
    )
    return token_logps(hidden, batch["targets"], model.unembed, chunk_size=chunk_size,
                       with_log_sum_sq=with_log_sum_sq)


def batch_sequence_logps(
    model, batch: Mapping[str, jax.Array], num_sequences: int, chunk_size: int = 256
) -> tuple[jax.Array, jax.Array]:
    """(sums f32 ``[N]``, counts i32 ``[N]``) per completion sequence of one micro-batch
    (``batch["seq_index"]`` assigns each target to a sequence, -1 = none)."""
    tl = batch_token_logps(model, batch, chunk_size=chunk_size)
    return sequence_logps(tl, batch["seq_index"], num_sequences)
