"""Robust DPO (Chowdhury et al. 2024): unbiased under label noise of rate label_smoothing.

See lnpo.losses.robust for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "robust"
    c.loss.name = "robust"
    c.loss.beta = 0.1
    c.loss.label_smoothing = 0.1
    return c
