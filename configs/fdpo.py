"""f-DPO with the Jensen-Shannon divergence (Wang et al. 2023); set loss.name to fdpo_forward_kl or fdpo_alpha
(with alpha) for the other divergences.

See lnpo.losses.fdpo_js for the formula. The other DPO-family objectives TRL allows take an f-divergence as
siblings <name>_forward_kl / _js / _alpha_div (with f_alpha), e.g. loss.name=ipo_js (lnpo.losses.divergence)."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "fdpo"
    c.loss.name = "fdpo_js"
    c.loss.beta = 0.1
    return c
