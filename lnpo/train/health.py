"""Signs that a run is broken beyond repair, read from each step's metrics (pure; the loop acts on them).

Vanishing gradients (:class:`ZeroGradientWatch`): the run stops when the gradient norm is
exactly ``0.0`` for :data:`ZERO_GRAD_PATIENCE` consecutive steps while the loss is finite and
not exactly ``0.0``. A float32 network reaches an exact zero gradient in two ways only:

- its outputs saturate (say ``optim.lr=1e6``: the log-softmax is exactly 0 or -inf everywhere,
  every derivative underflows). The loss then sits at some value above its minimum and no later
  step can move it: training on would export a ruined model with exit status 0;
- its objective is flat at its minimum 0 (every hinge satisfied, every sigmoid saturated in the
  right direction): a loss of exactly 0 is left alone.

A single zero step (or a few) can be a quirk of one batch; ``ZERO_GRAD_PATIENCE`` of them in a row,
each on a different batch, is not.
"""

from __future__ import annotations

import math

ZERO_GRAD_PATIENCE = 5  # consecutive steps with grad_norm == 0.0 (and loss != 0.0) that stop a run


class ZeroGradientWatch:
    """Counts consecutive zero-gradient steps; :meth:`update` returns why the run must stop, or ``""``."""

    def __init__(self, patience: int = ZERO_GRAD_PATIENCE):
        self.patience = patience
        self.first_step = None
        self.count = 0

    def update(self, step: int, loss: float, grad_norm: float) -> str:
        """Feed step ``step``'s (1-based) metrics; a one-line reason once the rule (module docstring) fires."""
        if grad_norm == 0.0 and math.isfinite(loss) and loss != 0.0:
            self.first_step = step if self.count == 0 else self.first_step
            self.count += 1
        else:
            self.count = 0
        if self.count < self.patience:
            return ""
        return (f"the gradient norm was exactly 0 for {self.count} consecutive steps ({self.first_step}-{step}) "
                f"while the loss stayed at {loss:.6g}, not its minimum 0: the model's outputs have saturated (is "
                f"optim.lr too high?) and training cannot recover")
