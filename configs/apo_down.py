"""APO-down: anchored preference optimization (D'Oosterlinck et al. 2024).

See lnpo.losses.apo_down for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "apo_down"
    c.loss.name = "apo_down"
    c.loss.beta = 0.1
    return c
