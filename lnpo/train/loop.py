"""The training loop: the only place with side effects (I/O, signals, logging).

``fit`` runs the jitted pure step over the data iterator, logs, computes the held-out loss,
checkpoints (state + iterator position), stops cleanly on SIGTERM and on a
non-finite loss, and resumes from the latest complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from lnpo import rundir
from lnpo.errors import UserError
from lnpo.train.checkpoint import Checkpointer, abstract_like
from lnpo.train.health import ZeroGradientWatch
from lnpo.train.logger import RunLogger
from lnpo.train.memory import release_freed_host_memory
from lnpo.train.preemption import process_flag


class NonFiniteLoss(UserError, RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint (if any) is kept."""


class VanishedGradients(NonFiniteLoss):
    """The gradients vanished for good (:mod:`lnpo.train.health`); the run stops without exporting."""


def _kept_checkpoint(checkpointer) -> str:
    latest = checkpointer.latest_step()
    if latest is None:
        return f"no checkpoint was written yet in {checkpointer.directory}"
    return f"the last good checkpoint (step {latest}) in {checkpointer.directory} is kept"


@dataclasses.dataclass
class FitResult:
    step: int
    preempted: bool
    last_metrics: dict
    state: Any


@dataclasses.dataclass
class LoopSpec:
    """What :func:`fit` needs besides the state: the jitted step and its data."""

    step_fn: Callable[[Any, dict], tuple[Any, dict]]  # (state, global batch) -> (state, metrics)
    batches: Iterator[tuple[dict, float]]  # yields (global batch of jax Arrays, its real token count)
    iterator_state: Callable[[], dict]  # position of the iterator after the last yielded batch
    restore_iterator: Callable[[dict], None]
    held_out_loss: Callable[[Any], dict] | None  # state -> the loss and metrics on the eval split ("eval/...")
    total_steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    keep_checkpoints: int
    flops_per_token: float  # model FLOPs per real token of a step (forward + backward + reference)
    peak_flops: float  # peak FLOP/s of all devices together
    learning_rate: Callable[[int], float]
    items_per_step: int  # pairs or examples per step


def delete_arrays(tree) -> None:
    """Free the device buffers of every jax.Array in ``tree`` now (the arrays become unusable)."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_deleted():
            leaf.delete()


def fit(state, spec: LoopSpec, *, workdir: str, desc: str = "train") -> FitResult:
    """Train ``state`` to ``spec.total_steps``; resume from ``workdir``'s latest checkpoint if there is one.

    On a resume ``state`` only gives the structure and shardings: its arrays are
    deleted before the checkpoint is read (peak memory stays one state, not two),
    so the caller must not use them afterwards.
    """
    checkpointer = Checkpointer(rundir.checkpoints_dir(workdir), keep=spec.keep_checkpoints)
    start = None
    if checkpointer.all_steps():
        abstract = abstract_like(state)
        delete_arrays(state)  # the fresh state's buffers go before the checkpoint's arrive: never two states
        start, state, data_state = checkpointer.restore_latest(abstract)
        spec.restore_iterator(data_state)
    step = int(start or 0)
    logger = RunLogger(workdir, total_steps=spec.total_steps, start_step=step, desc=desc)
    flag = process_flag().install()
    last: dict = {}
    window_time, window_steps, window_tokens = 0.0, 0, 0.0
    preempted = False
    compiled = False
    zero_grads = ZeroGradientWatch()
    try:
        while step < spec.total_steps:
            checkpointer.check()  # a failed asynchronous save stops the run at once
            if flag.should_stop():
                preempted = True
                break
            t0 = time.perf_counter()
            batch, tokens = next(spec.batches)
            state, metrics = spec.step_fn(state, batch)
            metrics = jax.device_get(metrics)
            if compiled:  # the first step of a (re)start includes compilation: not timed
                window_time += time.perf_counter() - t0
                window_steps += 1
                window_tokens += tokens
            else:  # hand the compiler's freed scratch back to the OS before the steps' buffers come on top
                release_freed_host_memory()
            compiled = True
            if not metrics.get("finite", 1.0):
                raise NonFiniteLoss(
                    f"non-finite loss or gradient at step {step + 1} (loss={float(metrics['loss'])}, "
                    f"grad_norm={float(metrics['grad_norm'])}); the update was not applied and "
                    f"{_kept_checkpoint(checkpointer)}"
                )
            step += 1
            stuck = zero_grads.update(step, float(metrics["loss"]), float(metrics.get("grad_norm", "nan")))
            if stuck:
                raise VanishedGradients(f"step {step}: {stuck}; stopped without exporting; "
                                        f"{_kept_checkpoint(checkpointer)}")
            logger.advance()
            row = None
            if step % spec.log_every == 0 or step == spec.total_steps:
                row = {k: float(v) for k, v in metrics.items() if k != "finite"}
                row["learning_rate"] = float(spec.learning_rate(step - 1))
                if window_steps:
                    seconds = window_time / window_steps
                    row.update({
                        "step_time_s": seconds,
                        "tokens_per_s": window_tokens / window_time,
                        "items_per_s": spec.items_per_step / seconds,
                        "mfu": spec.flops_per_token * window_tokens / window_time / spec.peak_flops,
                    })
                window_time, window_steps, window_tokens = 0.0, 0, 0.0
            eval_row = None
            if spec.held_out_loss is not None and (step % spec.eval_every == 0 or step == spec.total_steps):
                eval_row = spec.held_out_loss(state)
                row = {**(row or {}), **eval_row}
            if row is not None:
                logger.log(step, row)
                last = row
            if step % spec.checkpoint_every == 0 or step == spec.total_steps:
                checkpointer.save(step, state, spec.iterator_state(), metrics=eval_row)
        if preempted and step > 0 and checkpointer.latest_step() != step:
            checkpointer.save(step, state, spec.iterator_state())
    finally:
        flag.uninstall()
        checkpointer.close()
        logger.close()
    return FitResult(step=step, preempted=preempted, last_metrics=last, state=state)


def real_tokens(batch: dict, groups: int) -> float:
    """Non-padding tokens of the global batch: a host-local numpy batch's, times the number of batch
    groups (:func:`lnpo.parallel.batch_group`) that each feed such a share."""
    return float(np.count_nonzero(np.asarray(batch["segment_ids"]))) * groups
