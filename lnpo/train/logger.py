"""Run logging on process 0: ``metrics.jsonl``, TensorBoard events and a progress bar."""

from __future__ import annotations

import json
import math
import os
import sys

import jax

from lnpo import rundir


class RunLogger:
    """Writes one JSON object per logged step to ``<workdir>/metrics.jsonl`` and TensorBoard.

    On processes other than 0 every method is a no-op. Resuming appends; rows
    of steps after the resumed step (written before a preemption) are dropped
    first so the file reads as one uninterrupted run.
    """

    def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0, desc: str = "train"):
        self.enabled = jax.process_index() == 0
        self.path = rundir.metrics_path(workdir)
        self._bar = None
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        _truncate_after(self.path, start_step)
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        self._tb = SummaryWriter(rundir.tensorboard_dir(workdir))
        self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, file=sys.stderr,
                         dynamic_ncols=True, disable=None)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        if self._bar is not None and "loss" in row:
            self._bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()


def _plain(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _truncate_after(path: str, step: int) -> None:
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        rows = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(rows)


def read_metrics(workdir: str) -> list[dict]:
    """The rows of ``<workdir>/metrics.jsonl``."""
    with open(rundir.metrics_path(workdir), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
