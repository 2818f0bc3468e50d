"""DiscoPOP: log-ratio modulated loss (Lu et al. 2024).

See lnpo.losses.discopop for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "discopop"
    c.loss.name = "discopop"
    c.loss.beta = 0.05
    c.loss.tau = 0.05
    return c
