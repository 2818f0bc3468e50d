"""EXO (pairwise): reverse-KL preference matching (Ji et al. 2024).

See lnpo.losses.exo_pair for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "exo"
    c.loss.name = "exo_pair"
    c.loss.beta = 0.1
    c.loss.label_smoothing = 0.001
    return c
