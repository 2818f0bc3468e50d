"""ORPO: NLL plus lam * odds-ratio loss, reference-free (Hong et al. 2024).

See lnpo.losses.orpo for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "orpo"
    c.loss.name = "orpo"
    c.loss.lam = 0.1
    return c
