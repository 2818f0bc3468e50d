"""ln_dpo: see lnpo.losses.ln_dpo for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "lndpo"
    c.loss.name = "ln_dpo"
    c.loss.beta = 1.0  # per-token log-ratios: ~10x the DPO scale
    return c
