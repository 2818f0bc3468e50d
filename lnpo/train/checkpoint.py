"""Orbax checkpoints of the train state and the data iterator's position.

A checkpoint is written asynchronously into a temporary directory and renamed
into place only when complete, so a half-written checkpoint is never listed or
restored. The last ``keep`` checkpoints are kept, plus the best one by the
held-out metric when there is one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) to restore ``tree``'s structure onto its mesh."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )


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
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, metrics: dict | None = None) -> None:
        """Start an asynchronous save; a later :meth:`wait` (or the next save) finishes it."""
        if metrics is not None and self._best_metric not in metrics:
            metrics = None
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
            metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore checkpoint ``step`` into ``abstract_state``'s structure and shardings."""
        restored = self._manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["data"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
