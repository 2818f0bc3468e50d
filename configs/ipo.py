"""ipo: see lnpo.losses.ipo for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "ipo"
    c.loss.name = "ipo"
    c.loss.beta = 0.1
    return c
