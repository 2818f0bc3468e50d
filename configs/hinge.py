"""SLiC hinge loss relu(1 - beta * margin) (Zhao et al. 2023).

See lnpo.losses.hinge for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "hinge"
    c.loss.name = "hinge"
    c.loss.beta = 0.1
    return c
