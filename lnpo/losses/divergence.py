"""f-divergences as an option of the DPO-family objectives: ``<name>_forward_kl``, ``<name>_js``, ``<name>_alpha_div``.

f-DPO (Wang et al. 2024, "Beyond reverse KL: generalizing direct preference
optimization with diverse divergence constraints"; TRL ``DPOConfig.f_divergence_type``)
replaces each log-ratio a = log pi(y)/pi_ref(y) by the score g(a) = f'(pi/pi_ref)
(up to a constant) of another f-divergence before the loss sees it:

* ``_forward_kl``: g(a) = 1 - e^{-a}                   (TRL ``"forward_kl"``)
* ``_js``:         g(a) = log 2 + log sigma(a)          (TRL ``"js_divergence"``)
* ``_alpha_div``:  g(a) = (1 - e^{-alpha a}) / alpha    (TRL ``"alpha_divergence"``,
  ``f_alpha_divergence_coef = 1 - f_alpha``); hyperparameter ``f_alpha`` in (0, 1),
  required (-> 0: reverse KL, -> 1: forward KL).

The base objective's loss then reads the scores wherever it read log-ratios
(``Inputs.margin``: c_w g(a_w) - c_l g(a_l), with c = 1/L(y) where the base
normalizes by length, as TRL's ``ipo`` / ``sigmoid_norm`` divide the scores);
rewards and every other metric stay the base's, of the plain log-ratios (TRL logs
beta * log-ratio too). The siblings exist exactly where TRL 1.16 allows a
non-default ``f_divergence_type``: BASES below (``dpo``'s are ``fdpo_*``; TRL's
``["sigmoid", "sft"]`` is ``rpo``, ``ld_alpha`` is ``ld_dpo``). They register
before the WPO siblings, so ``hinge_forward_kl_wpo`` etc. exist too.

Numerics: the exponential scores' common scale e^M, M = max(-alpha a_w, -alpha a_l),
saturates at exp(SCORE_EXP_CAP) (TRL clamps the exponent at 80, which overflows
IPO's square in float32); the sign and relative size of the two terms survive,
so the margin keeps its direction when both saturate. Below the cap the scores
are computed with expm1 (no cancellation for small alpha).
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp

from lnpo.losses import _registry
from lnpo.losses._numerics import log_sigmoid
from lnpo.losses.objectives import OPEN_UNIT

BASES = ("ln_dpo", "ld_dpo", "hinge", "ipo", "exo_pair", "robust", "discopop", "rpo")
"""Objectives with f-divergence siblings: TRL 1.16's ``f_divergence_loss_types`` but ``sigmoid`` (= ``fdpo_*``)
and ``sft`` (no log-ratio), i.e. sigmoid_norm, hinge, ipo, exo_pair, robust, discopop, plus sigmoid with
``ld_alpha`` (``ld_dpo``) and ``["sigmoid", "sft"]`` (``rpo``)."""

SCORE_EXP_CAP = 40.0  # exp(40) ~ 2.4e17: squared (IPO) still finite in float32
_LN2 = math.log(2.0)


def alpha_margin(a_w, a_l, c_w, c_l, alpha):
    """c_w g(a_w) - c_l g(a_l), g(a) = (1 - e^{-alpha a}) / alpha (alpha = 1: forward KL), overflow-safe."""
    e_w, e_l = -alpha * a_w, -alpha * a_l
    m = jax.lax.stop_gradient(jnp.maximum(e_w, e_l))
    # below the cap: -expm1 keeps small-alpha scores accurate; the min keeps this branch finite everywhere
    exact = (c_w * -jnp.expm1(jnp.minimum(e_w, SCORE_EXP_CAP)) - c_l * -jnp.expm1(jnp.minimum(e_l, SCORE_EXP_CAP)))
    # above it: factor out e^M and saturate only that scale
    scaled = (c_w - c_l) - jnp.exp(SCORE_EXP_CAP) * (c_w * jnp.exp(e_w - m) - c_l * jnp.exp(e_l - m))
    return jnp.where(m <= SCORE_EXP_CAP, exact, scaled) / alpha


def js_margin(a_w, a_l, c_w, c_l):
    """c_w g(a_w) - c_l g(a_l), g(a) = log 2 + log sigma(a) (Jensen-Shannon; bounded above by log 2)."""
    return c_w * (_LN2 + log_sigmoid(a_w)) - c_l * (_LN2 + log_sigmoid(a_l))


# suffix -> (extra hyperparameters, margin(hp) -> (a_w, a_l, c_w, c_l) -> margin, TRL f_divergence_type, g(a))
DIVERGENCES = {
    "_forward_kl": ({}, lambda hp: functools.partial(alpha_margin, alpha=1.0), "forward_kl", "1 - e^{-a}"),
    "_js": ({}, lambda hp: js_margin, "js_divergence", "log 2 + log sigma(a)"),
    "_alpha_div": ({"f_alpha": OPEN_UNIT}, lambda hp: functools.partial(alpha_margin, alpha=hp["f_alpha"]),
                   "alpha_divergence", "(1 - e^{-f_alpha a}) / f_alpha"),
}


def _diverged(base: _registry.Objective, suffix: str):
    _, margin_of, trl_name, g = DIVERGENCES[suffix]

    def core(x, hp):
        return base.core(x._replace(f_margin=margin_of(hp)), hp)

    alpha_note = " with f_alpha_divergence_coef = 1 - f_alpha" if suffix == "_alpha_div" else ""
    core.__doc__ = (f"{base.name} under an f-divergence (f-DPO, Wang et al. 2024, \"Beyond reverse KL\");\n"
                    f"TRL f_divergence_type=\"{trl_name}\"{alpha_note}.\n"
                    f"Every log-ratio a the loss below reads is replaced by the score g(a) = {g}\n"
                    f"(lnpo.losses.divergence); rewards and metrics stay the base's, of a.\n\n"
                    + inspect.cleandoc(base.doc))
    return core


def register_siblings() -> None:
    """Register ``<base><suffix>`` for every base in BASES and every f-divergence."""
    for name in BASES:
        base = _registry._objective(name)
        for suffix, (extra, _, _, _) in DIVERGENCES.items():
            _registry.register(name + suffix, reference=True, needs=base.needs, **base.params, **extra)(
                _diverged(base, suffix))


register_siblings()
