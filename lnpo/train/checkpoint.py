"""Orbax checkpoints of the train state and the data iterator's position, verified on restore.

A checkpoint is written asynchronously into a temporary directory and renamed
into place only when complete, so a half-written checkpoint is never listed or
restored. The last ``keep`` checkpoints are kept, plus the best one by the
held-out metric when there is one.

Each checkpoint also records a content checksum of every array of the state
(:mod:`lnpo.train.checksum`). :meth:`Checkpointer.restore_latest` restores the
newest checkpoint that reads *and* matches its checksums; a damaged one (a file
truncated, deleted or altered, its metadata gone) is named in one line, moved to
``<directory>.damaged/<step>`` and the next older one is tried. Only when none
restores is it a :class:`~lnpo.errors.CheckpointError` naming the directory.

A failed save (disk full, permissions) surfaces as a ``CheckpointError`` at the
next step boundary (:meth:`Checkpointer.check`): the run stops at the first
failed save and the previous checkpoint stays.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from lnpo.errors import CheckpointError
from lnpo.train import checksum

CHECKSUM_VERSION = 1


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) to restore ``tree``'s structure onto its mesh."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (orbax and tensorstore messages run for many lines)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


class _QuietOrbaxErrors(logging.Filter):
    """Drops orbax's own ERROR records (thread tracebacks of a failed save): :meth:`Checkpointer.check`
    reports the failure in one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


class Checkpointer:
    """Save and restore ``(state, iterator state)`` pairs under ``directory``.

    ``best_metric`` names a key of the metrics passed to :meth:`save` (lower is
    better); checkpoints saved without metrics are kept by recency only.
    """

    def __init__(self, directory: str, *, keep: int = 2, best_metric: str = "eval/loss"):
        self.directory = os.path.abspath(directory)
        keep = max(int(keep), 1)
        preserve = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=keep),
                policies.BestN(
                    get_metric_fn=lambda metrics: metrics[best_metric],
                    reverse=True,  # lower is better
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preserve,
            enable_async_checkpointing=True,
            create=True,
        )
        self._best_metric = best_metric
        self._pending: int | None = None  # step of the save that may still be in flight
        self._failed = False  # a save failed and was reported: closing must not report it again
        self._filter = _QuietOrbaxErrors()
        logging.getLogger("absl").addFilter(self._filter)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as e:
            raise CheckpointError(f"checkpoint directory {self.directory}: cannot be created ({e.strerror})") from None

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, metrics: dict | None = None) -> None:
        """Start an asynchronous save; a later :meth:`wait` (or the next save) finishes it."""
        if metrics is not None and self._best_metric not in metrics:
            metrics = None
        if self._pending is not None:
            self.wait()  # a failure of the previous save is reported as that step's, before this one starts
        record = {"version": CHECKSUM_VERSION, "arrays": checksum.tree_checksums(state)}
        try:
            self._manager.save(
                int(step),
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                                        checksums=ocp.args.JsonSave(record)),
                metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
                force=True,
            )
        except Exception as e:  # noqa: BLE001 (orbax raises ValueError/OSError for I/O; each is this save failing)
            self._raise_save_failed(int(step), e)
        self._pending = int(step)

    def check(self) -> None:
        """Raise :class:`CheckpointError` (one line) if the last asynchronous save failed."""
        if self._pending is None:
            return
        try:
            self._manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            self._raise_save_failed(self._pending, e)

    def _raise_save_failed(self, step: int, error: BaseException):
        self._pending = None
        self._failed = True
        kept = [s for s in self._manager.all_steps() if s != step]
        previous = f"the checkpoint of step {max(kept)} is kept" if kept else "no earlier checkpoint exists"
        raise CheckpointError(f"saving the checkpoint of step {step} into {self.directory} failed "
                              f"({_reason(error)}); {previous}") from None

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore checkpoint ``step`` into ``abstract_state``'s structure and shardings, verified against
        its checksums; raises :class:`CheckpointError` naming the step's directory if it is damaged."""
        where = os.path.join(self.directory, str(step))
        try:
            restored = self._manager.restore(
                int(step),
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                                        checksums=ocp.args.JsonRestore()),
            )
            state, data, record = restored["state"], dict(restored["data"]), restored["checksums"]
        except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many types for an unreadable file)
            raise CheckpointError(f"checkpoint {where}: unreadable ({first_line(e)})") from None
        if not isinstance(record, dict) or record.get("version") != CHECKSUM_VERSION:
            raise CheckpointError(f"checkpoint {where}: no checksum record")
        bad = checksum.mismatches(record.get("arrays", {}), checksum.tree_checksums(state))
        if bad:
            raise CheckpointError(f"checkpoint {where}: {len(bad)} array(s) differ from their saved checksum "
                                  f"(first: {bad[0]})")
        return state, data

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """``(step, state, iterator state)`` of the newest checkpoint that restores, or None when there is none.

        Damaged checkpoints are skipped (one line each, moved to ``<directory>.damaged/``). All processes
        agree on each attempt, so a file only one host cannot read skips the step everywhere.
        """
        self._manager.reload()
        steps = sorted(self._manager.all_steps(), reverse=True)
        reasons = []
        for step in steps:
            try:
                state, data = self.restore(step, abstract_state)
                error = None
            except CheckpointError as e:
                state, data, error = None, None, e
            if _all_processes_agree(error is None):
                return step, state, data
            message = (str(error) if error is not None
                       else f"checkpoint {self.directory}/{step}: unreadable on another process")
            reasons.append(message)
            if jax.process_index() == 0:
                print(f"lnpo: skipping a damaged checkpoint: {message}", flush=True)
            self._set_aside(step)
        if steps:
            raise CheckpointError(f"no checkpoint in {self.directory} restores ({len(steps)} tried; newest: "
                                  f"{reasons[0]}); move the directory away to start over")
        return None

    def _set_aside(self, step: int) -> None:
        """Move a damaged step out of the way so a later save of the same step can take its place."""
        if jax.process_index() == 0:
            target_dir = f"{self.directory}.damaged"
            os.makedirs(target_dir, exist_ok=True)
            target = os.path.join(target_dir, str(step))
            if os.path.lexists(target):
                shutil.rmtree(target, ignore_errors=True)
            os.replace(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"lnpo_checkpoint_set_aside_{step}")
        self._manager.reload()

    def wait(self) -> None:
        """Finish the save in flight; raises :class:`CheckpointError` if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            if self._failed:
                return
            self._raise_save_failed(self._pending if self._pending is not None else -1, e)
        if not self._failed:
            self.check()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()
            logging.getLogger("absl").removeFilter(self._filter)


def _reason(error: BaseException) -> str:
    text = str(error)
    if "No space left on device" in text or getattr(error, "errno", None) == 28:
        return "no space left on device"
    if "Permission denied" in text or getattr(error, "errno", None) == 13:
        return "permission denied"
    return first_line(error)


def _all_processes_agree(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.array([ok], dtype=np.int32))).all())
