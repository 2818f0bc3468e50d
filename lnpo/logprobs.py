"""Per-token and per-sequence log-probs without materializing ``[B, T, V]`` float32 logits.

``token_logps`` splits the sequence into chunks of ``chunk_size`` positions (strided:
chunk i holds positions ``i, i + n, i + 2n, ...``) and
runs each chunk's unembed + log-softmax under ``jax.checkpoint`` inside a
``jax.lax.map`` loop: the forward pass holds one chunk's ``[B, C, V]`` logits at a
time, and the backward pass recomputes them chunk by chunk instead of storing
them.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp


def _chunk_logps(unembed: Callable[[jax.Array], jax.Array]):
    @jax.checkpoint
    def f(h_BxCxD: jax.Array, t_BxC: jax.Array) -> jax.Array:
        logits = unembed(h_BxCxD).astype(jnp.float32)  # [B, C, V]
        lse = jax.nn.logsumexp(logits, axis=-1)
        target = jnp.take_along_axis(logits, t_BxC[..., None], axis=-1)[..., 0]
        return target - lse

    return f


def token_logps(
    hidden_BxTxD: jax.Array,
    targets_BxT: jax.Array,
    unembed: Callable[[jax.Array], jax.Array],
    *,
    chunk_size: int = 256,
) -> jax.Array:
    """float32 ``[B, T]``: ``log softmax(unembed(hidden))[b, t, targets[b, t]]``.

    unembed: ``[B, C, D] -> [B, C, V]`` logits (e.g. ``model.unembed``).
    chunk_size: positions per chunk (T is padded up to a multiple of it).
    Targets where there is none (e.g. 0) give finite values that callers mask.
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
    f = _chunk_logps(unembed)
    out = jax.lax.map(lambda xs: f(*xs), (h_chunks, t_chunks))  # [n, B, C]
    return out.transpose(1, 2, 0).reshape(B, n * C)[:, :T]


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


def batch_token_logps(model, batch: Mapping[str, jax.Array], chunk_size: int = 256) -> jax.Array:
    """float32 ``[R, T]`` target log-probs of one micro-batch in the layout of
    docs/architecture.md (keys input_ids, positions, segment_ids, branch_ids, targets)."""
    hidden = model.hidden_states(
        batch["input_ids"],
        positions=batch.get("positions"),
        segment_ids=batch.get("segment_ids"),
        branch_ids=batch.get("branch_ids"),
    )
    return token_logps(hidden, batch["targets"], model.unembed, chunk_size=chunk_size)


def batch_sequence_logps(
    model, batch: Mapping[str, jax.Array], num_sequences: int, chunk_size: int = 256
) -> tuple[jax.Array, jax.Array]:
    """(sums f32 ``[N]``, counts i32 ``[N]``) per completion sequence of one micro-batch
    (``batch["seq_index"]`` assigns each target to a sequence, -1 = none)."""
    tl = batch_token_logps(model, batch, chunk_size=chunk_size)
    return sequence_logps(tl, batch["seq_index"], num_sequences)
