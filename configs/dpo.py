"""dpo: see lnpo.losses.dpo for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "dpo"
    c.loss.name = "dpo"
    c.loss.beta = 0.1
    return c
