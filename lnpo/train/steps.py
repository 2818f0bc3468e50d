"""Pure train and eval steps for the three stages (SFT, *PO, reward model).

A batch is the dict of docs/architecture.md with arrays ``[A, R, T]`` (A
micro-batches) plus per-pair arrays ``[A, P]``:

- ``pair_valid``: 1.0 for a real pair / example, 0.0 for padding (eval batches);
- ``ref_chosen``, ``ref_rejected``: cached reference log-probs (reference cache).

Every micro-batch loss is a *sum* over its pairs (or target tokens, for SFT);
the step divides the accumulated sums by the batch's total count, so gradient
accumulation gives exactly the mean over the whole batch.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lnpo import logprobs
from lnpo import losses as losses_lib

ROW_KEYS = ("input_ids", "positions", "segment_ids", "branch_ids", "targets", "seq_index")
# Batch arrays are [A, rows or pairs, ...]: axis 1 is split over the data-parallel mesh axes.
BATCH_SPEC = jax.sharding.PartitionSpec(None, ("data", "fsdp"))


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # nnx.State of the policy's nnx.Param variables
    opt_state: Any


def reference_copy(params, dtype):
    """A frozen reference: a separate copy of ``params`` in ``dtype`` with the same shardings (the
    policy's own buffers are donated to the step, so the reference cannot share them)."""
    return jax.jit(lambda p: jax.tree.map(lambda x: (x + 0).astype(dtype), p),
                   out_shardings=jax.tree.map(lambda x: x.sharding, params))(params)


def sequence_logps(model, mb: dict, num_sequences: int, chunk_size: int):
    """Summed target log-probs and target counts per completion sequence: ``([N] f32, [N] i32)``."""
    return logprobs.batch_sequence_logps(model, mb, num_sequences, chunk_size=chunk_size)


def sequence_end_scores(model, mb: dict, num_sequences: int):
    """Reward-model scores ``[N]``: the score head at each sequence's last token.

    A sequence's last token sits one position after its last target (the
    target at position t is the token at t + 1 of the same row).
    """
    hidden = model.hidden_states(
        mb["input_ids"], positions=mb["positions"], segment_ids=mb["segment_ids"], branch_ids=mb["branch_ids"]
    )
    scores = model.score(hidden)[..., 0].astype(jnp.float32)  # [R, T]
    rows, length = mb["seq_index"].shape
    flat_pos = jnp.arange(rows * length, dtype=jnp.int32).reshape(rows, length)
    seq = jnp.where(mb["seq_index"] >= 0, mb["seq_index"], num_sequences)
    last_target = jax.ops.segment_max(flat_pos.reshape(-1), seq.reshape(-1), num_segments=num_sequences + 1)
    last_token = jnp.clip(last_target[:num_sequences] + 1, 0, rows * length - 1)
    return scores.reshape(-1)[last_token]


def _masked_sums(per_pair: jax.Array, metrics: dict, valid: jax.Array) -> dict:
    out = {"loss": jnp.sum(per_pair * valid)}
    for key, value in metrics.items():
        out[key] = jnp.sum(jnp.asarray(value, jnp.float32) * valid)
    return out


def _pairs(v):
    """``[2P]`` per-sequence values -> (chosen ``[P]``, rejected ``[P]``)."""
    return v[0::2], v[1::2]


def pair_statistics(mb, needs: tuple, counts, policy_tokens, ref_tokens, log_sum_sq, key) -> dict:
    """The :class:`lnpo.losses.PairLogps` statistics in ``needs`` (``shared``, ``sampled``,
    ``aligned``) from per-token log-probs ``[R, T]`` (``ref_tokens`` None: the reference's
    parts come from the batch (``ref_*_shared``, cached) or are not needed)."""
    seq_index = mb["seq_index"]
    n = counts.shape[0]
    out = {}

    def stats(mask, with_ref=True):
        pc, pr = _pairs(logprobs.masked_sequence_sums(policy_tokens, mask, seq_index, n))
        if not with_ref:
            return losses_lib.SequenceStats(pc, pr)
        if ref_tokens is None:
            return None
        rc, rr = _pairs(jax.lax.stop_gradient(logprobs.masked_sequence_sums(ref_tokens, mask, seq_index, n)))
        return losses_lib.SequenceStats(pc, pr, rc, rr)

    if "shared" in needs:
        mask = logprobs.shared_mask(seq_index, counts)
        out["shared"] = stats(mask)
        if ref_tokens is None and "ref_chosen_shared" in mb:
            out["shared"] = stats(mask, with_ref=False)._replace(
                ref_chosen=mb["ref_chosen_shared"], ref_rejected=mb["ref_rejected_shared"])
    if "sampled" in needs:
        if ref_tokens is None and "ref_chosen" in mb:
            raise ValueError("sampo re-draws its tokens every step: its reference must run in the step "
                             "(reference.mode='in_step'), not from the cache")
        out["sampled"] = stats(logprobs.sampled_mask(seq_index, counts, key))
    if "aligned" in needs:
        aligned = jax.lax.stop_gradient(policy_tokens - log_sum_sq)
        pc, pr = _pairs(logprobs.masked_sequence_sums(aligned, seq_index >= 0, seq_index, n))
        out["aligned"] = losses_lib.SequenceStats(pc, pr)
    return out


def cached_reference_names(needs: tuple) -> tuple[str, ...]:
    """What the reference cache stores per pair for an objective with ``needs``: always the summed
    ``chosen``/``rejected`` log-probs, plus ``chosen_shared``/``rejected_shared`` (LD-DPO's shared-prefix
    sums) for ``shared``. The batch carries each as ``ref_<name>`` ``[A, L]``. (``sampled`` cannot be
    cached: it is re-drawn every step; ``aligned`` is the policy's only.)"""
    return ("chosen", "rejected") + (("chosen_shared", "rejected_shared") if "shared" in needs else ())


def reference_sums(model, mb: dict, *, num_pairs: int, chunk_size: int, needs: tuple = ()) -> dict:
    """One micro-batch's reference values to cache, ``{name: f32 [num_pairs]}`` for
    :func:`cached_reference_names`; the same numbers the in-step reference gives."""
    tokens = logprobs.batch_token_logps(model, mb, chunk_size)
    sums, counts = logprobs.sequence_logps(tokens, mb["seq_index"], 2 * num_pairs)
    out = dict(zip(("chosen", "rejected"), _pairs(sums)))
    if "shared" in needs:
        shared = logprobs.masked_sequence_sums(tokens, logprobs.shared_mask(mb["seq_index"], counts),
                                               mb["seq_index"], 2 * num_pairs)
        out["chosen_shared"], out["rejected_shared"] = _pairs(shared)
    return out


def po_micro_sums(model, mb, *, objective: Callable, hparams: dict, num_pairs: int, chunk_size: int,
                  reference=None, seed: int = 0):
    """Sums over one micro-batch's pairs of the objective's loss and metrics.

    ``hparams`` are the objective's hyperparameters: float32 scalars (traced
    under the step's jit) or None.

    ``reference`` is a frozen reference model (in-step reference) or None, in
    which case ``mb`` carries cached ``ref_chosen``/``ref_rejected`` (and, for an
    objective that needs ``shared``, ``ref_chosen_shared``/``ref_rejected_shared``)
    or the objective is reference-free.

    The per-token statistics the objective declares (``objective.needs``) are
    computed here and nowhere else: an objective with no needs runs exactly the
    summed-log-prob step. ``sampled`` draws from ``key(seed)`` folded with
    ``mb["sample_key"]`` (the step and micro-batch, set by :func:`train_step` /
    :func:`eval_step`). Unpaired (KTO) batches carry ``pair_label``.
    """
    needs = tuple(getattr(objective, "needs", ()))
    n = 2 * num_pairs
    if "aligned" in needs:
        tokens, log_sum_sq = logprobs.batch_token_logps(model, mb, chunk_size, with_log_sum_sq=True)
    else:
        tokens, log_sum_sq = logprobs.batch_token_logps(model, mb, chunk_size), None
    sums, counts = logprobs.sequence_logps(tokens, mb["seq_index"], n)
    ref_tokens = None
    if reference is not None:
        ref_tokens = jax.lax.stop_gradient(logprobs.batch_token_logps(reference, mb, chunk_size))
        ref_chosen, ref_rejected = _pairs(logprobs.sequence_logps(ref_tokens, mb["seq_index"], n)[0])
    elif "ref_chosen" in mb:
        ref_chosen, ref_rejected = mb["ref_chosen"], mb["ref_rejected"]
    else:
        ref_chosen = ref_rejected = None
    extra = {}
    if needs:
        key = jax.random.key(seed)
        if "sample_key" in mb:
            key = jax.random.fold_in(jax.random.fold_in(key, mb["sample_key"][0]), mb["sample_key"][1])
        extra = pair_statistics(mb, needs, counts, tokens, ref_tokens, log_sum_sq, key)
    if "label" in needs:
        extra["label"] = mb["pair_label"]
    pair = losses_lib.PairLogps(
        policy_chosen=sums[0::2],
        policy_rejected=sums[1::2],
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
        chosen_tokens=counts[0::2],
        rejected_tokens=counts[1::2],
        valid=mb["pair_valid"],
        **extra,
    )
    per_pair, metrics = objective(pair, **hparams)
    return _masked_sums(per_pair, metrics, mb["pair_valid"])


def sft_micro_sums(model, mb, *, num_examples: int, chunk_size: int):
    """Completion-only NLL summed over the micro-batch's target tokens."""
    sums, counts = sequence_logps(model, mb, num_examples, chunk_size)
    valid = mb["pair_valid"]
    return {"loss": -jnp.sum(sums * valid), "tokens": jnp.sum(counts * valid).astype(jnp.float32)}


def rm_micro_sums(model, mb, *, num_pairs: int):
    """Bradley-Terry loss -log sigma(r_w - r_l) summed over the micro-batch's pairs."""
    scores = sequence_end_scores(model, mb, 2 * num_pairs)
    chosen, rejected = scores[0::2], scores[1::2]
    margin = chosen - rejected
    metrics = {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": margin,
        "rewards/accuracies": (margin > 0).astype(jnp.float32),
    }
    return _masked_sums(-jax.nn.log_sigmoid(margin), metrics, mb["pair_valid"])


def micro_sums_fn(stage: str, *, objective=None, num_pairs: int, chunk_size: int, seed: int = 0):
    """``fn(model, mb, reference, loss_hparams) -> dict of sums`` for ``stage``; the loss sum is under
    "loss". ``loss_hparams`` is the objective's hyperparameters (``{}`` for SFT and reward models);
    ``seed`` seeds the objective's token sampling (SamPO), with the step and micro-batch folded in."""
    if stage == "po":
        return lambda model, mb, reference, loss_hparams: po_micro_sums(
            model, mb, objective=objective, hparams=loss_hparams, num_pairs=num_pairs,
            chunk_size=chunk_size, reference=reference, seed=seed)
    if stage == "sft":
        return lambda model, mb, reference, loss_hparams: sft_micro_sums(
            model, mb, num_examples=num_pairs, chunk_size=chunk_size)
    if stage == "rm":
        return lambda model, mb, reference, loss_hparams: rm_micro_sums(model, mb, num_pairs=num_pairs)
    raise ValueError(f"unknown stage {stage!r}")


EVAL_STEP = -1  # the "step" evaluation batches draw their samples with (never a training step)


def _num_micro(batch: dict) -> int:
    return jax.tree.leaves(batch)[0].shape[0]


def with_sample_key(mb: dict, step) -> dict:
    """``mb`` with ``sample_key`` = int32 ``[2]`` (step, micro-batch index) in place of
    ``micro_index``: what an objective's token sampling (SamPO) folds into its seed, so a
    draw is a pure function of (seed, step, micro-batch), the same under jit and on resume."""
    mb = dict(mb)
    index = mb.pop("micro_index")
    mb["sample_key"] = jnp.stack([jnp.asarray(step, jnp.int32), jnp.asarray(index, jnp.int32)])
    return mb


def step_hparams(learning_rate: float, loss_hparams: dict) -> dict:
    """The step's hyperparameter input: ``{"learning_rate": f32, "loss": {name: f32 or None}}``.

    The peak learning rate and the objective's hyperparameters enter the jitted
    step as float32 arrays, not as constants baked into it, so runs that differ
    only in them (a sweep's grid points) lower to the same program and share one
    compiled step (through JAX's persistent compilation cache across processes).
    """
    as_array = lambda v: None if v is None else np.float32(v)  # noqa: E731
    return {"learning_rate": as_array(learning_rate), "loss": {k: as_array(v) for k, v in loss_hparams.items()}}


def _denominator(stage: str, sums: dict, batch: dict) -> jax.Array:
    if stage == "sft":
        return jnp.maximum(sums["tokens"], 1.0)
    return jnp.maximum(jnp.sum(batch["pair_valid"]), 1.0)


def policy_model(graphdef, params, frozen=None):
    """The policy: ``params`` (what trains) merged with the ``frozen`` state (LoRA's base weights) if any."""
    return nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, params, frozen)


def reference_model(ref_graphdef, ref_params, frozen=None):
    """The in-step reference: ``ref_params`` in ``ref_graphdef``; with ``ref_graphdef`` but no ``ref_params``, the
    frozen base itself with the adapters off (LoRA's ``reference.mode="base"``: no copy); else None."""
    if ref_params is not None:
        return nnx.merge(ref_graphdef, ref_params)
    if ref_graphdef is not None and frozen is not None:
        return nnx.merge(ref_graphdef, frozen)
    return None


def dropout_key(seed, sample_key):
    """LoRA dropout's key for one micro-batch: ``key(seed)`` folded with (step, micro-batch); None without seed."""
    if seed is None:
        return None
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), sample_key[0]), sample_key[1])


def train_step(state: TrainState, batch: dict, ref_params, hparams: dict, frozen=None, *, graphdef,
               ref_graphdef=None, tx: optax.GradientTransformation, stage: str, sums_fn: Callable,
               dropout_seed: int | None = None):
    """One optimizer step over ``A`` micro-batches; returns ``(new_state, metrics)``.

    ``hparams`` is :func:`step_hparams`'s dict; ``tx`` is
    :func:`lnpo.train.optim.make_optimizer`'s transformation, whose updates are
    for a peak learning rate of 1 and are scaled here by
    ``hparams["learning_rate"]``.

    ``frozen``: LoRA's frozen base state (``state.params`` are then the adapters alone: only they get
    gradients and optimizer state); the reference is :func:`reference_model`. ``dropout_seed``: LoRA dropout
    on, keyed by (seed, step, micro-batch).

    Pure: jit it with explicit shardings and donate ``state`` (never ``frozen``). A non-finite
    loss or gradient leaves the parameters and optimizer state unchanged and
    reports ``finite = 0``.
    """
    from lnpo.models import lora

    reference = reference_model(ref_graphdef, ref_params, frozen)

    def micro_loss(params, mb):
        model = policy_model(graphdef, params, frozen)
        with lora.dropout_key(dropout_key(dropout_seed, mb["sample_key"])):
            sums = sums_fn(model, mb, reference, hparams["loss"])
        return sums["loss"], sums

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def accumulate(carry, mb):
        grads, sums = carry
        mb = with_sample_key(mb, state.step)
        (_, mb_sums), mb_grads = grad_fn(state.params, mb)
        grads = jax.tree.map(jnp.add, grads, mb_grads)
        sums = jax.tree.map(jnp.add, sums, mb_sums)
        return (grads, sums), None

    batch = dict(batch, micro_index=jnp.arange(_num_micro(batch), dtype=jnp.int32))
    first = with_sample_key(jax.tree.map(lambda x: x[0], batch), state.step)
    sums_shape = jax.eval_shape(lambda: micro_loss(state.params, first)[1])
    zeros_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), sums_shape)
    zeros_grads = jax.tree.map(jnp.zeros_like, state.params)
    (grads, sums), _ = jax.lax.scan(accumulate, (zeros_grads, zeros_sums), batch)

    denom = _denominator(stage, sums, batch)
    grads = jax.tree.map(lambda g: g / denom, grads)
    metrics = {k: v / denom for k, v in sums.items() if k != "tokens"}
    if stage == "sft":
        metrics["tokens"] = sums["tokens"]
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)

    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * hparams["learning_rate"].astype(u.dtype), updates)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = TrainState(
        step=state.step + finite.astype(state.step.dtype),
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state),
    )
    metrics["grad_norm"] = grad_norm
    metrics["finite"] = finite.astype(jnp.float32)
    return new_state, metrics


def eval_step(params, batch: dict, ref_params, loss_hparams: dict, frozen=None, *, graphdef, ref_graphdef=None,
              stage: str, sums_fn: Callable) -> dict:
    """Held-out sums over a batch: the same sums as training, no gradient (and no dropout). Returns the
    sums and the count (pairs or tokens) they are to be divided by. ``loss_hparams``
    is :func:`step_hparams`'s ``"loss"`` entry; ``frozen`` as in :func:`train_step`."""
    model = policy_model(graphdef, params, frozen)
    reference = reference_model(ref_graphdef, ref_params, frozen)

    def body(total, mb):
        sums = sums_fn(model, with_sample_key(mb, EVAL_STEP), reference, loss_hparams)
        return jax.tree.map(jnp.add, total, sums), None

    pairs_valid = batch["pair_valid"]
    batch = dict(batch, micro_index=jnp.arange(_num_micro(batch), dtype=jnp.int32))
    first = with_sample_key(jax.tree.map(lambda x: x[0], batch), EVAL_STEP)
    shape = jax.eval_shape(lambda: sums_fn(model, first, reference, loss_hparams))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shape)
    sums, _ = jax.lax.scan(body, zeros, batch)
    count = sums["tokens"] if stage == "sft" else jnp.sum(pairs_valid)
    sums["count"] = count
    return sums
