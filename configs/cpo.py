"""CPO: reference-free sigmoid loss plus NLL (Xu et al. 2024).

See lnpo.losses.cpo for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "cpo"
    c.loss.name = "cpo"
    c.loss.beta = 0.1
    c.loss.nll_weight = 1.0
    return c
