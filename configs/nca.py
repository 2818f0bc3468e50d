"""NCA (pairwise) (Chen et al. 2024).

See lnpo.losses.nca_pair for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "nca"
    c.loss.name = "nca_pair"
    c.loss.beta = 0.1
    return c
