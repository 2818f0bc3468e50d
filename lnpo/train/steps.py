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


def po_micro_sums(model, mb, *, objective: Callable, hparams: dict, num_pairs: int, chunk_size: int,
                  reference=None):
    """Sums over one micro-batch's pairs of the objective's loss and metrics.

    ``hparams`` are the objective's hyperparameters: float32 scalars (traced
    under the step's jit) or None.

    ``reference`` is a frozen reference model (in-step reference) or None, in
    which case ``mb`` carries cached ``ref_chosen``/``ref_rejected`` or the
    objective is reference-free.
    """
    sums, counts = sequence_logps(model, mb, 2 * num_pairs, chunk_size)
    if reference is not None:
        ref_sums, _ = sequence_logps(reference, mb, 2 * num_pairs, chunk_size)
        ref_sums = jax.lax.stop_gradient(ref_sums)
        ref_chosen, ref_rejected = ref_sums[0::2], ref_sums[1::2]
    elif "ref_chosen" in mb:
        ref_chosen, ref_rejected = mb["ref_chosen"], mb["ref_rejected"]
    else:
        ref_chosen = ref_rejected = None
    pair = losses_lib.PairLogps(
        policy_chosen=sums[0::2],
        policy_rejected=sums[1::2],
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
        chosen_tokens=counts[0::2],
        rejected_tokens=counts[1::2],
        valid=mb["pair_valid"],
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


def micro_sums_fn(stage: str, *, objective=None, num_pairs: int, chunk_size: int):
    """``fn(model, mb, reference, loss_hparams) -> dict of sums`` for ``stage``; the loss sum is under
    "loss". ``loss_hparams`` is the objective's hyperparameters (``{}`` for SFT and reward models)."""
    if stage == "po":
        return lambda model, mb, reference, loss_hparams: po_micro_sums(
            model, mb, objective=objective, hparams=loss_hparams, num_pairs=num_pairs,
            chunk_size=chunk_size, reference=reference)
    if stage == "sft":
        return lambda model, mb, reference, loss_hparams: sft_micro_sums(
            model, mb, num_examples=num_pairs, chunk_size=chunk_size)
    if stage == "rm":
        return lambda model, mb, reference, loss_hparams: rm_micro_sums(model, mb, num_pairs=num_pairs)
    raise ValueError(f"unknown stage {stage!r}")


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


def train_step(state: TrainState, batch: dict, ref_params, hparams: dict, *, graphdef, ref_graphdef=None,
               tx: optax.GradientTransformation, stage: str, sums_fn: Callable):
    """One optimizer step over ``A`` micro-batches; returns ``(new_state, metrics)``.

    ``hparams`` is :func:`step_hparams`'s dict; ``tx`` is
    :func:`lnpo.train.optim.make_optimizer`'s transformation, whose updates are
    for a peak learning rate of 1 and are scaled here by
    ``hparams["learning_rate"]``.

    Pure: jit it with explicit shardings and donate ``state``. A non-finite
    loss or gradient leaves the parameters and optimizer state unchanged and
    reports ``finite = 0``.
    """
    reference = None if ref_params is None else nnx.merge(ref_graphdef, ref_params)

    def micro_loss(params, mb):
        model = nnx.merge(graphdef, params)
        sums = sums_fn(model, mb, reference, hparams["loss"])
        return sums["loss"], sums

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def accumulate(carry, mb):
        grads, sums = carry
        (_, mb_sums), mb_grads = grad_fn(state.params, mb)
        grads = jax.tree.map(jnp.add, grads, mb_grads)
        sums = jax.tree.map(jnp.add, sums, mb_sums)
        return (grads, sums), None

    first = jax.tree.map(lambda x: x[0], batch)
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


def eval_step(params, batch: dict, ref_params, loss_hparams: dict, *, graphdef, ref_graphdef=None, stage: str,
              sums_fn: Callable) -> dict:
    """Held-out sums over a batch: the same sums as training, no gradient. Returns the
    sums and the count (pairs or tokens) they are to be divided by. ``loss_hparams``
    is :func:`step_hparams`'s ``"loss"`` entry."""
    model = nnx.merge(graphdef, params)
    reference = None if ref_params is None else nnx.merge(ref_graphdef, ref_params)

    def body(total, mb):
        sums = sums_fn(model, mb, reference, loss_hparams)
        return jax.tree.map(jnp.add, total, sums), None

    first = jax.tree.map(lambda x: x[0], batch)
    shape = jax.eval_shape(lambda: sums_fn(model, first, reference, loss_hparams))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shape)
    sums, _ = jax.lax.scan(body, zeros, batch)
    count = sums["tokens"] if stage == "sft" else jnp.sum(batch["pair_valid"])
    sums["count"] = count
    return sums
