"""RPO: DPO plus alpha * the chosen response's mean NLL (Pang et al. 2024).

See lnpo.losses.rpo for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "rpo"
    c.loss.name = "rpo"
    c.loss.beta = 0.1
    c.loss.alpha = 1.0
    return c
