"""R-DPO: DPO with a length regularizer alpha * (|y_w| - |y_l|) (Park et al. 2024).

See lnpo.losses.rdpo for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "rdpo"
    c.loss.name = "rdpo"
    c.loss.beta = 0.1
    c.loss.alpha = 0.01
    return c
