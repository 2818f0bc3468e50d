"""Conservative DPO: DPO with label smoothing (Mitchell 2023).

See lnpo.losses.dpo for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "cdpo"
    c.loss.name = "dpo"
    c.loss.beta = 0.1
    c.loss.label_smoothing = 0.1
    return c
