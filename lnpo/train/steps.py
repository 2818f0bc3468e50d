"""Pure train and eval steps for the three stages (SFT, *PO, reward model).

A batch is the dict of docs/architecture.md with arrays ``[A, R, T]`` (A
micro-batches) plus per-pair arrays ``[A, P]``:

- ``example_valid``: 1.0 for a real pair / example, 0.0 for padding (eval batches);
- ``ref_chosen``, ``ref_rejected``: cached reference log-probs (reference cache).

Every micro-batch loss is a *sum* over its pairs (or target tokens, for SFT);
the step divides the accumulated sums by the batch's total count, so gradient
accumulation gives exactly the mean over the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


@flax.struct.dataclass
class WeightedSums:
    """A micro-batch's results as sums plus the count they are a mean over (tunix's ``WeightedMetric``).

    ``sums``: ``{name: f32 scalar}``, each value summed over the micro-batch's real pairs (or, for SFT,
    target tokens); ``count``: f32 scalar, how many; ``count_name``: what they are (``pairs``, ``tokens``).
    Adding two gives the sums and count of both, so
    the mean over a whole batch of micro-batches is exact: ``total.mean() = sum of sums / sum of counts``
    (a count of 0 is read as 1: an all-padding batch gives 0, not NaN).
    """

    sums: dict
    count: jax.Array
    count_name: str = flax.struct.field(pytree_node=False, default="pairs")  # what is counted (a metric name)

    def __add__(self, other: WeightedSums) -> WeightedSums:
        return jax.tree.map(jnp.add, self, other)

    def denominator(self) -> jax.Array:
        return jnp.maximum(self.count, 1.0)

    def mean(self) -> dict:
        return {k: v / self.denominator() for k, v in self.sums.items()}


def weighted_by_valid(per_pair: jax.Array, metrics: dict, valid: jax.Array) -> WeightedSums:
    """``per_pair`` loss ``[P]`` and per-pair ``metrics`` summed over the pairs with ``valid`` 1, counted."""
    sums = {"loss": jnp.sum(per_pair * valid)}
    for key, value in metrics.items():
        sums[key] = jnp.sum(jnp.asarray(value, jnp.float32) * valid)
    return WeightedSums(sums=sums, count=jnp.sum(valid).astype(jnp.float32))


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
                  reference=None, seed: int = 0) -> WeightedSums:
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
        valid=mb["example_valid"],
        **extra,
    )
    per_pair, metrics = objective(pair, **hparams)
    return weighted_by_valid(per_pair, metrics, mb["example_valid"])


def sft_micro_sums(model, mb, *, num_examples: int, chunk_size: int) -> WeightedSums:
    """Completion-only NLL summed over the micro-batch's target tokens, counted in tokens."""
    sums, counts = logprobs.batch_sequence_logps(model, mb, num_examples, chunk_size=chunk_size)
    valid = mb["example_valid"]
    count = jnp.sum(counts * valid).astype(jnp.float32)
    return WeightedSums(sums={"loss": -jnp.sum(sums * valid)}, count=count, count_name="tokens")


def rm_micro_sums(model, mb, *, num_pairs: int) -> WeightedSums:
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
    return weighted_by_valid(-jax.nn.log_sigmoid(margin), metrics, mb["example_valid"])


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


def scan_micro_batches(fn: Callable, batch: dict, step):
    """``sum_a fn(mb_a)`` over the ``A`` micro-batches of ``batch`` (arrays ``[A, ...]``) in one ``lax.scan``.

    ``fn(mb)`` returns any pytree of arrays (a :class:`WeightedSums`, its gradients, ...); each ``mb``
    carries ``sample_key`` = (``step``, its index) (:func:`with_sample_key`). The one loop over
    micro-batches: :func:`train_step` and :func:`eval_step` both run it.
    """
    batch = dict(batch, micro_index=jnp.arange(_num_micro(batch), dtype=jnp.int32))
    keyed = lambda mb: fn(with_sample_key(mb, step))  # noqa: E731
    shape = jax.eval_shape(keyed, jax.tree.map(lambda x: x[0], batch))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape)

    def accumulate(total, mb):
        return jax.tree.map(jnp.add, total, keyed(mb)), None

    total, _ = jax.lax.scan(accumulate, zeros, batch)
    return total


def merge_model(graphdef, params, frozen=None):
    """The module the step differentiates: ``graphdef`` with ``params`` (the state's trainable parameters) and,
    for LoRA, the ``frozen`` base state (``params`` are then the adapters)."""
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
               ref_graphdef=None, tx: optax.GradientTransformation, sums_fn: Callable,
               dropout_seed: int | None = None):
    """One optimizer step over ``A`` micro-batches; returns ``(new_state, metrics)``.

    ``sums_fn(model, mb, reference, loss_hparams) -> WeightedSums`` is the stage's
    (:data:`lnpo.train.stages.STAGES`). The gradients of the summed losses and the sums are
    accumulated over the micro-batches, then divided by the batch's total count (pairs, or
    target tokens for SFT): exactly the mean over the whole batch. ``metrics`` are the means,
    the count under its name (``pairs`` or ``tokens``), ``grad_norm`` and ``finite``.

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
        with lora.dropout_key(dropout_key(dropout_seed, mb["sample_key"])):
            sums = sums_fn(merge_model(graphdef, params, frozen), mb, reference, hparams["loss"])
        return sums.sums["loss"], sums

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def micro(mb):
        (_, sums), grads = grad_fn(state.params, mb)
        return sums, grads

    total, grads = scan_micro_batches(micro, batch, state.step)
    grads = jax.tree.map(lambda g: g / total.denominator(), grads)
    metrics = total.mean()
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
    metrics[total.count_name] = total.count
    metrics["grad_norm"] = grad_norm
    metrics["finite"] = finite.astype(jnp.float32)
    return new_state, metrics


def eval_step(params, batch: dict, ref_params, loss_hparams: dict, frozen=None, *, graphdef, ref_graphdef=None,
              sums_fn: Callable) -> WeightedSums:
    """Held-out loss of a batch: the training step's :class:`WeightedSums` over its micro-batches, no
    gradient and no dropout (the caller adds batches and takes ``.mean()``). ``loss_hparams`` is
    :func:`step_hparams`'s ``"loss"`` entry; ``frozen`` as in :func:`train_step`."""
    model = merge_model(graphdef, params, frozen)
    reference = reference_model(ref_graphdef, ref_params, frozen)
    return scan_micro_batches(lambda mb: sums_fn(model, mb, reference, loss_hparams), batch, EVAL_STEP)
