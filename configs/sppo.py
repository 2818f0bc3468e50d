"""SPPO with hard labels (Wu et al. 2024).

See lnpo.losses.sppo_hard for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "sppo"
    c.loss.name = "sppo_hard"
    c.loss.beta = 0.1
    return c
