"""Optimizer: AdamW with warmup then cosine / linear / constant, global-norm clipping."""

from __future__ import annotations

import optax

from lnpo.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(*, lr: float, steps: int, warmup_steps: int, schedule: str) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then ``schedule`` to 0 at ``steps``."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule: unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    warmup_steps = min(warmup_steps, steps)
    decay_steps = max(steps - warmup_steps, 1)
    if schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps)
    elif schedule == "linear":
        after = optax.linear_schedule(lr, 0.0, decay_steps)
    else:
        after = optax.constant_schedule(lr)
    if warmup_steps == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), after], [warmup_steps])


def make_optimizer(optim_config, *, steps: int, lr: float | None = None, warmup_steps: int | None = None):
    """``(tx, schedule)`` from the config's ``optim`` section.

    ``schedule`` is the learning rate of every step (warmup to the peak ``lr``,
    then the decay). ``tx`` is global-norm clipping then AdamW whose schedule has
    the same shape but peaks at 1: multiply its updates by the peak learning rate
    (:func:`lnpo.train.steps.train_step` does, taking the rate as an input), which
    gives exactly AdamW with ``schedule`` (decoupled weight decay included) while
    the compiled step does not depend on the rate's value.
    """
    peak = optim_config.lr if lr is None else lr
    shape = dict(steps=steps, warmup_steps=optim_config.warmup_steps if warmup_steps is None else warmup_steps,
                 schedule=optim_config.schedule)
    schedule = learning_rate_schedule(lr=peak, **shape)
    parts = []
    if optim_config.clip_norm and optim_config.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim_config.clip_norm))
    parts.append(
        optax.adamw(
            learning_rate_schedule(lr=1.0, **shape),
            b1=optim_config.b1,
            b2=optim_config.b2,
            eps=optim_config.eps,
            weight_decay=optim_config.weight_decay,
        )
    )
    return optax.chain(*parts), schedule
