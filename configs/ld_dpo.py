"""LD-DPO (length-desensitized DPO: the tail beyond the shorter response weighted by alpha; TRL ld_alpha).

See lnpo.losses.ld_dpo for the formula. The reference cache also stores the shared-prefix sums."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "ld_dpo"
    c.loss.name = "ld_dpo"
    c.loss.beta = 0.1
    c.loss.alpha = 0.5  # 1 = DPO, 0 = only the shared length counts
    return c
