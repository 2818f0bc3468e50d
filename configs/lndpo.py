"""ln_dpo: see lnpo.losses.ln_dpo for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "lndpo"
    c.loss.name = "ln_dpo"
    # Per-token log-ratios are ~1/|y| of DPO's summed ones, so LN-DPO's beta sits ~10-50x higher; 5 is the
    # middle of the study sweep's grid (configs/sweeps/paper_embedded.py).
    c.loss.beta = 5.0
    return c
