"""AlphaPO (reference-free; SimPO's reward reshaped by alpha; TRL CPO loss_type="alphapo").

See lnpo.losses.alphapo for the formula."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "alphapo"
    c.loss.name = "alphapo"
    c.loss.beta = 2.0
    c.loss.alpha = 0.25  # 0 = SimPO
    c.loss.gamma = 0.5
    return c
