"""SimPO (reference-free, length-normalized, target margin gamma): see lnpo.losses.simpo."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "simpo"
    c.loss.name = "simpo"
    c.loss.beta = 2.0
    c.loss.gamma = 0.5
    return c
