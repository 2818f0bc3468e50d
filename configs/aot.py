"""AOT: distributional alignment via optimal transport (Melnyk et al. 2024).

See lnpo.losses.aot for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "aot"
    c.loss.name = "aot"
    c.loss.beta = 0.1
    return c
