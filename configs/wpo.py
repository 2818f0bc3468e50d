"""WPO (DPO with each pair weighted by its length-normalized, aligned policy probability; TRL use_weighting).

Any DPO-family objective X has the weighted sibling X_wpo (lnpo.losses.weighting); this is dpo_wpo."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "wpo"
    c.loss.name = "dpo_wpo"
    c.loss.beta = 0.1
    return c
