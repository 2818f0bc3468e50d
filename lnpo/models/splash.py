"""Training attention through JAX's Pallas TPU splash-attention kernel.

The kernel's mask is a *static* block-sparse pattern shared by every row (here causal,
or causal-local on sliding-window layers) AND-ed with per-token segment ids
(``q_ids[t] == kv_ids[s]``). lnpo's mask (:func:`lnpo.models.attention_kernels.attention_mask`)
maps onto it exactly:

- causal order: ``CausalMask``; a sliding window ``w``: ``LocalMask`` with ``(w - 1, 0)``
  (the kernel counts row order, lnpo counts positions: the same within one sequence of a
  padded or packed row, where positions step by one per slot);
- packed segments (0 = padding): the segment ids themselves;
- shared-prompt branches (a key is visible when it is in branch 0 or in the query's
  branch): no single equality of ids expresses "the prompt and myself but not the other
  branch", so the keys are split into two disjoint sets and the kernel runs once on each:
  A, ids ``(segment, branch)``: every query's own branch (the prompt's queries: the prompt);
  B, query ids ``segment`` on branch > 0 and key ids ``segment`` on branch 0: a completion's
  prompt. The two partial softmaxes are merged exactly by their log-sum-exps,
  ``out = sum_i exp(lse_i - lse) out_i`` with ``lse = logaddexp(lse_A, lse_B)``, and the
  backward pass runs the kernel's own backward on each set with the merged ``out`` and
  ``lse`` (the gradient of a softmax over a union of keys, block by block). Twice the
  attention FLOPs of one causal call; sliding windows are refused with branches (a
  completion's positions restart at the prompt's end, so row order and position
  differences disagree by the other completion's length, which no static mask holds).
- GQA: the kernel's MHA mode maps query head ``h`` to kv head ``h // (H / K)``, lnpo's
  grouping.

Under a mesh (:func:`sharded_splash_attention`) the kernel runs per shard under
``shard_map``: rows over the batch axes, heads over the tensor axis, and over a context axis
each shard's queries against the row's gathered keys and values (the kernel's
``q_seq_shards``). The merge above calls the kernel module's private
``_splash_attention_forward`` / ``_splash_attention_bwd`` (jax 0.10.2): the public entry
point does not differentiate its log-sum-exp.

Scores are never materialized: memory is the kernel's blocks, O(T) per head. Off TPU the
kernel runs in Pallas' interpret mode (slow; used by the tests); runs refuse it there.
Queries with no visible key (padding) get a finite output that every consumer ignores.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sak

from lnpo.errors import ModelError
from lnpo.parallel import active_mesh_rules, logical_to_spec, spec_entry_axes

LANES = 128  # the kernel's blocks are multiples of this along both sequence axes

# Segment ids of the padding the kernel's block size adds (they match nothing).
_PAD_Q, _PAD_KV = -3, -4


def block_size(length: int) -> int:
    """The kernel's block along a sequence of ``length`` (already a multiple of 128)."""
    for b in (512, 256, 128):
        if length % b == 0:
            return b
    raise ValueError(f"splash block: length {length} is not a multiple of {LANES}")


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, length: int, window: int, softcap: float | None, interpret: bool, q_shards: int = 1):
    """The splash kernel for ``heads`` query heads over ``length`` x ``length`` (row order):
    causal, or causal within ``window`` positions when ``window`` > 0; its mask tables split
    into ``q_shards`` slices of the queries (a context axis)."""
    shape = (length, length)
    one = sa.LocalMask(shape, window_size=(window - 1, 0), offset=0) if window > 0 else sa.CausalMask(shape)
    b = block_size(length // q_shards)
    blocks = sa.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                           block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    with jax.ensure_compile_time_eval():  # concrete mask tables, so the cache outlives one trace
        return sa.make_splash_mha(sa.MultiHeadMask([one] * heads), block_sizes=blocks, head_shards=1,
                                  q_seq_shards=q_shards, attn_logits_soft_cap=softcap, interpret=interpret)


def _collapse(info):
    """The partial-mask-block layout the kernel's entry point hands its forward/backward."""
    if info is None or info.partial_mask_blocks is None:
        return info
    return info._replace(partial_mask_blocks=info.partial_mask_blocks.reshape(-1, *info.partial_mask_blocks.shape[-2:]))


def _forward_with_lse(kernel, q, k, v, segment_ids):
    """(out ``[H, T, D]``, lse f32 ``[H, T]``) of one kernel call, not differentiated."""
    kw = dict(kernel.kwargs)
    kw["save_residuals"] = True
    out, (lse,) = sak._splash_attention_forward(_collapse(kernel.fwd_mask_info), q, k, v, segment_ids, None, **kw)
    return out, lse


def _backward(kernel, q, k, v, segment_ids, out, lse, d_out):
    """(dq, dk, dv) of one kernel call's keys given the *merged* softmax's out and lse."""
    kw = {n: kernel.kwargs[n] for n in ("mask_value", "is_mqa", "block_sizes", "residual_checkpoint_name",
                                        "mask_function", "attn_logits_soft_cap", "interpret")}
    res = (q, k, v, segment_ids, None, out, lse, _collapse(kernel.dq_mask_info), _collapse(kernel.dkv_mask_info))
    grads = sak._splash_attention_bwd(False, kw["mask_value"], kw["is_mqa"], kw["block_sizes"],
                                      kw["residual_checkpoint_name"], kw["mask_function"],
                                      kw["attn_logits_soft_cap"], kw["interpret"], res, d_out)
    return grads[3], grads[4], grads[5]


def _merged(kernel, q, k, v, seg_a, seg_b):
    oa, la = _forward_with_lse(kernel, q, k, v, seg_a)
    ob, lb = _forward_with_lse(kernel, q, k, v, seg_b)
    lse = jnp.logaddexp(la, lb)
    out = jnp.exp(la - lse)[..., None] * oa.astype(jnp.float32) + jnp.exp(lb - lse)[..., None] * ob.astype(jnp.float32)
    return out.astype(q.dtype), lse


@jax.custom_vjp
def _two_key_sets(kernel, q, k, v, seg_a, seg_b):
    """Attention of one row over the union of two disjoint key sets, each given by its own
    segment ids: ``q [H, T, D]``, ``k, v [K, S, D]`` -> ``[H, T, D]``. The kernel (its mask
    tables: a shard's slice under ``shard_map``) is an argument, not a closure, so no tracer
    escapes into the backward pass."""
    return _merged(kernel, q, k, v, seg_a, seg_b)[0]


def _two_key_sets_fwd(kernel, q, k, v, seg_a, seg_b):
    out, lse = _merged(kernel, q, k, v, seg_a, seg_b)
    return out, (kernel, q, k, v, seg_a, seg_b, out, lse)


def _no_tangent(tree):
    """float0 zeros in the structure of an integer/boolean pytree (mask tables, segment ids)."""
    return jax.tree.map(lambda x: np.zeros(np.shape(x), jax.dtypes.float0), tree)


def _two_key_sets_bwd(res, d_out):
    kernel, q, k, v, seg_a, seg_b, out, lse = res
    ga = _backward(kernel, q, k, v, seg_a, out, lse, d_out)
    gb = _backward(kernel, q, k, v, seg_b, out, lse, d_out)
    dq, dk, dv = (a.astype(jnp.float32) + b.astype(jnp.float32) for a, b in zip(ga, gb))
    return (_no_tangent(kernel), dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), _no_tangent(seg_a),
            _no_tangent(seg_b))


_two_key_sets.defvjp(_two_key_sets_fwd, _two_key_sets_bwd)


def _prepare(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segments_BxT, branches_BxT, *, window: int, scale: float,
             multiple: int):
    """Padded ``[B, heads, Tp, D]`` q (scaled), k, v (Tp a multiple of ``multiple``) and the
    segment ids of each key set: ``[(q_ids [B, Tp], kv_ids [B, Tp])]``, one set without branches,
    two with them (own branch; a completion's prompt)."""
    T = q_BxTxHxD.shape[1]
    if branches_BxT is not None and window > 0:
        raise ModelError("attn_implementation 'splash' cannot combine sliding-window layers with shared-prompt "
                         "branches (branch_ids); use 'xla' or another layout")
    pad = -(-T // multiple) * multiple - T
    padded = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    to_heads = lambda x: padded(x).transpose(0, 2, 1, 3)  # noqa: E731
    q = to_heads(q_BxTxHxD * jnp.asarray(scale, q_BxTxHxD.dtype))
    k, v = to_heads(k_BxTxKxD), to_heads(v_BxTxKxD)
    seg = jnp.asarray(segments_BxT, jnp.int32)
    fill = lambda x, c: jnp.pad(x, ((0, 0), (0, pad)), constant_values=c)  # noqa: E731
    ids = lambda q_ids, kv_ids: (fill(q_ids, _PAD_Q), fill(kv_ids, _PAD_KV))  # noqa: E731
    if branches_BxT is None:
        return q, k, v, [ids(seg, seg)]
    br = jnp.asarray(branches_BxT, jnp.int32)
    own = seg * (jnp.max(br) + 1) + br  # (segment, branch); padding (segment 0) stays 0
    return q, k, v, [ids(own, own), ids(jnp.where(br > 0, seg, -1), jnp.where(br == 0, seg, -2))]


def _attend(kernel, q, k, v, *flat_ids):
    """The kernel over rows: q ``[B, H, Tq, D]``, k/v ``[B, K, S, D]``, ids as ``_prepare``'s,
    flattened (q_ids, kv_ids, ...); ``[B, H, Tq, D]``."""
    sets = [sa.SegmentIds(q=a, kv=b) for a, b in zip(flat_ids[0::2], flat_ids[1::2])]
    if len(sets) == 1:
        return jax.vmap(lambda q, k, v, ids: kernel(q, k, v, segment_ids=ids))(q, k, v, sets[0])
    return jax.vmap(_two_key_sets, in_axes=(None, 0, 0, 0, 0, 0))(kernel, q, k, v, *sets)


def splash_attention(
    q_BxTxHxD: jax.Array,
    k_BxTxKxD: jax.Array,
    v_BxTxKxD: jax.Array,
    segments_BxT: jax.Array,
    branches_BxT: jax.Array | None,
    *,
    window: int,
    scale: float,
    softcap: float | None = None,
) -> jax.Array:
    """Self-attention in row order (query t and key t are the same token) with lnpo's mask,
    through the splash kernel; ``[B, T, H, D]`` in q's dtype. ``window`` is static (0 =
    global); ``softcap`` caps the scaled scores as ``cap * tanh(s / cap)``."""
    B, T, H, D = q_BxTxHxD.shape
    q, k, v, id_sets = _prepare(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segments_BxT, branches_BxT, window=int(window),
                                scale=scale, multiple=LANES)
    kernel = _kernel(H, q.shape[2], int(window), None if softcap is None else float(softcap), _interpret())
    out = _attend(kernel, q, k, v, *[x for pair in id_sets for x in pair])
    return out.transpose(0, 2, 1, 3)[:, :T]


def _interpret() -> bool:
    return jax.devices()[0].platform != "tpu"


def sharded_splash_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segments_BxT, branches_BxT, *, windows: tuple[int, ...],
                             window, scale: float, softcap: float | None = None) -> jax.Array:
    """:func:`splash_attention` on the active mesh (:func:`lnpo.parallel.use_rules`), one kernel
    per shard under ``shard_map``: rows split over the batch axes, heads over the heads' axes
    (kv heads repeated to the query heads first when the axis does not divide them) and, with a
    context axis, the queries' positions over it against the row's gathered keys and values
    (the kernel's ``q_seq_shards``: each shard gets its slice of the block mask; the row is
    padded to a multiple of 128 x context). ``windows`` are the model's distinct static
    windows; ``window`` (traced, one of them) picks this layer's kernel."""
    cap = None if softcap is None else float(softcap)
    active = active_mesh_rules()
    if active is None:
        def run(w, q, k, v, seg, br):
            return splash_attention(q, k, v, seg, br, window=w, scale=scale, softcap=cap)
    else:
        mesh, rules = active
        run = functools.partial(_run_sharded, mesh, rules, scale=scale, softcap=cap)
    args = (q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segments_BxT, branches_BxT)
    if len(windows) == 1:
        return run(windows[0], *args)
    index = jnp.searchsorted(jnp.asarray(windows, jnp.int32), window)
    return jax.lax.switch(index, [functools.partial(run, w) for w in windows], *args)


def _run_sharded(mesh, rules, window, q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segments_BxT, branches_BxT, *, scale,
                 softcap):
    P = jax.sharding.PartitionSpec
    B, T, H, D = q_BxTxHxD.shape
    spec = logical_to_spec(("batch", "length", "act_heads", None), rules, shape=q_BxTxHxD.shape,
                           mesh_shape=dict(mesh.shape))
    size = lambda entry: int(np.prod([mesh.shape[a] for a in spec_entry_axes(entry)]))  # noqa: E731
    rows, context, heads = spec[0], (spec[1] if size(spec[1]) > 1 else None), spec[2]
    k, v = k_BxTxKxD, v_BxTxKxD
    if k.shape[2] % size(heads):  # kv heads the axis does not divide: one copy per query head
        k, v = (jnp.repeat(x, H // x.shape[2], axis=2) for x in (k, v))
    shards = size(context)
    q, k, v, id_sets = _prepare(q_BxTxHxD, k, v, segments_BxT, branches_BxT, window=int(window), scale=scale,
                                multiple=LANES * shards)
    kernel = _kernel(H, q.shape[2], int(window), softcap, _interpret(), shards)
    kernel_spec = kernel.manual_sharding_spec(jax.sharding.NamedSharding(mesh, P(None, context)))
    q_spec, kv_spec = P(rows, heads, context, None), P(rows, heads, None, None)
    id_specs = [P(rows, context), P(rows, None)] * len(id_sets)
    out = jax.shard_map(_attend, mesh=mesh, in_specs=(kernel_spec, q_spec, kv_spec, kv_spec, *id_specs),
                        out_specs=q_spec, check_vma=False)(kernel, q, k, v, *[x for pair in id_sets for x in pair])
    return out.transpose(0, 2, 1, 3)[:, :T]
