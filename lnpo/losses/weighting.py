"""WPO weighting as an option of the DPO-family objectives: ``<name>_wpo``.

WPO (Zhou et al. 2024, "WPO: enhancing RLHF with weighted preference
optimization", eq. 2; TRL ``DPOConfig(use_weighting=True)``) weights each
pair's loss by how likely the policy is to produce it, length-normalized and
"aligned" by the policy's own sampling distribution:

    w(y) = exp( (1/L(y)) sum_t [log pi(y_t) - log sum_v pi(v)^2] ),
    L_wpo = w(y_w) w(y_l) * L_base,   w under stop_gradient.

Every reference-based pairwise objective gets a sibling ``<name>_wpo`` with the
same hyperparameters (``dpo_wpo``, ``ln_dpo_wpo``, ``ld_dpo_wpo``, ...), except
the ones that sort the batch (``aot``, ``aot_unpaired``: TRL refuses them too,
the weights would not follow the sorted pairs) and the unpaired ones. The
siblings read ``PairLogps.aligned`` (the policy's aligned sums) on top of their
base's needs. The exponent saturates at EXP_CAP.
"""

from __future__ import annotations

import inspect

import jax

from lnpo.losses import _registry
from lnpo.losses._numerics import capped_exp

SUFFIX = "_wpo"
EXCLUDED = ("aot", "aot_unpaired")


def wpo_weights(x) -> jax.Array:
    """w(y_w) w(y_l) ``[B]`` under stop_gradient, from ``x.aligned`` (see the module docstring)."""
    s = x.aligned
    return jax.lax.stop_gradient(capped_exp(s.policy_chosen / x.chosen_length + s.policy_rejected / x.rejected_length))


def _weighted(base: _registry.Objective):
    def core(x, hp):
        loss, rewards_chosen, rewards_rejected, extra = base.core(x, hp)
        w = wpo_weights(x)
        return loss * w, rewards_chosen, rewards_rejected, {**extra, "wpo/weight": w}

    core.__doc__ = (f"{base.name} weighted by WPO (Zhou et al. 2024; TRL ``use_weighting=True``):\n"
                    f"L = w(y_w) w(y_l) * L_{base.name}, w(y) = exp(mean_t [log pi(y_t) - log sum_v pi(v)^2])\n"
                    f"under stop_gradient (extra metric ``wpo/weight``).\n\n" + inspect.cleandoc(base.doc))
    return core


def eligible(name: str) -> bool:
    """Whether objective ``name`` has a WPO sibling."""
    obj = _registry._objective(name)
    return obj.reference and "label" not in obj.needs and name not in EXCLUDED and not name.endswith(SUFFIX)


def register_siblings() -> None:
    """Register ``<name>_wpo`` for every eligible objective registered so far."""
    for name in _registry.names():
        if eligible(name) and name + SUFFIX not in _registry.names():
            base = _registry._objective(name)
            _registry.register(name + SUFFIX, reference=True, needs=tuple(base.needs) + ("aligned",),
                               **base.params)(_weighted(base))


register_siblings()
