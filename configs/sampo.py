"""SamPO (DPO on token log-ratios down-sampled to the shorter response's length): see lnpo.losses.sampo.

The draw is new every step (seeded by config.seed, the step and the micro-batch), so the reference runs in
the step: a cached reference sum cannot be re-sampled."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "sampo"
    c.loss.name = "sampo"
    c.loss.beta = 0.1
    c.reference.mode = "in_step"
    return c
