"""APO-zero: anchored preference optimization (D'Oosterlinck et al. 2024).

See lnpo.losses.apo_zero for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "apo_zero"
    c.loss.name = "apo_zero"
    c.loss.beta = 0.1
    return c
