"""BCO (pairwise): binary classifier optimization (Jung et al. 2024).

See lnpo.losses.bco_pair for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "bco"
    c.loss.name = "bco_pair"
    c.loss.beta = 0.1
    return c
