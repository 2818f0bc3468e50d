"""Length-debiasing objectives: LD-DPO, SamPO (both read per-token statistics) and AlphaPO.

Notation as in :mod:`lnpo.losses.objectives`. LD-DPO and SamPO need more than
summed log-probs: the registry declares ``needs=("shared",)`` / ``("sampled",)``
and the train step computes those :class:`~lnpo.losses.SequenceStats` from the
per-token log-probs (``lnpo.logprobs.sequence_stats``) only for them.
"""

from __future__ import annotations

import jax.numpy as jnp

from lnpo.losses._numerics import EXP_CAP, softplus
from lnpo.losses._registry import Param, register
from lnpo.losses.objectives import BETA, NONNEG

UNIT = Param(low=0.0, high=1.0)  # required, in [0, 1]
FINITE = Param()  # required, any finite value


@register("ld_dpo", reference=True, needs=("shared",), beta=BETA, alpha=UNIT)
def _ld_dpo(x, hp):
    """LD-DPO, length-desensitized DPO (Liu et al. 2024, "LD-DPO: length
    desensitization in direct preference optimization", arXiv 2409.06411);
    TRL ``DPOConfig(ld_alpha=alpha)`` with ``loss_type="sigmoid"``.

    Each sequence's log-prob is split at l_s = min(|y_w|, |y_l|) tokens into the
    shared part (the first l_s tokens) and the verbose tail, and the tail is
    weighted by alpha, for the policy and the reference alike:
    log pi_ld(y) = log pi(y_{1..l_s}) + alpha * log pi(y_{l_s+1..|y|}),
    L = -log sigma(beta [log pi_ld/pi_ref_ld(y_w) - log pi_ld/pi_ref_ld(y_l)]).

    ``alpha`` in [0, 1] (required): 1 is DPO, 0 drops the tail (the paper uses
    0.2-0.8). Reads ``PairLogps.shared`` (the first-l_s sums). Rewards: beta *
    the alpha-weighted log-ratio (as TRL).
    """
    beta, alpha = hp["beta"], hp["alpha"]
    s = x.shared

    def ld(total, shared):
        return shared + alpha * (total - shared)

    aw = ld(x.policy_chosen, s.policy_chosen) - ld(x.ref_chosen, s.ref_chosen)
    al = ld(x.policy_rejected, s.policy_rejected) - ld(x.ref_rejected, s.ref_rejected)
    return softplus(-beta * x.margin(aw, al)), beta * aw, beta * al, {}


@register("sampo", reference=True, needs=("sampled",), beta=BETA)
def _sampo(x, hp):
    """SamPO, down-sampled DPO (Lu et al. 2024, "Eliminating biased length
    reliance of direct preference optimization via down-sampled KL divergence",
    arXiv 2406.10957). Not in TRL.

    From each completion, l_s = min(|y_w|, |y_l|) token positions S(y) are drawn
    uniformly without replacement (all of the shorter one's), and the token-level
    log-ratios are summed over them only:
    a_s(y) = sum_{t in S(y)} [log pi(y_t) - log pi_ref(y_t)],
    L = -log sigma(beta [a_s(y_w) - a_s(y_l)]).

    The draw is the train step's (``PairLogps.sampled``): deterministic given
    the run's seed, the step and the micro-batch, new at every step; the
    reference must then be evaluated in the step (a cached sum cannot be
    re-sampled). Rewards: beta * a_s(y).
    """
    beta = hp["beta"]
    s = x.sampled
    rw = beta * (s.policy_chosen - s.ref_chosen)
    rl = beta * (s.policy_rejected - s.ref_rejected)
    return softplus(-(rw - rl)), rw, rl, {}


def alpha_reward(mean_logp, alpha):
    """AlphaPO's reward shape r = (1 - p^-alpha) / alpha of p = exp(mean_logp), as
    -expm1(-alpha * mean_logp) / alpha (no cancellation at small alpha); alpha = 0 is
    the limit mean_logp (SimPO). The exponent saturates at EXP_CAP (finite reward,
    zero gradient beyond it)."""
    safe = jnp.where(alpha == 0.0, 1.0, alpha)
    shaped = -jnp.expm1(jnp.minimum(-safe * mean_logp, EXP_CAP)) / safe
    return jnp.where(alpha == 0.0, mean_logp, shaped)


@register("alphapo", reference=False, beta=BETA, alpha=FINITE, gamma=NONNEG)
def _alphapo(x, hp):
    """AlphaPO (Gupta et al. 2025, "AlphaPO: reward shape matters for LLM
    alignment", arXiv 2501.03884); TRL ``CPOConfig(loss_type="alphapo", alpha=...)``
    (``loss_type="simpo"``, ``cpo_alpha=0``).

    With the per-token mean log-prob m(y) = log pi(y) / L(y) and the reward shape
    r(y) = (1 - exp(m(y))^-alpha) / alpha  (alpha = 0: r = m, SimPO),
    L = -log sigma(beta [r(y_w) - r(y_l)] - gamma), reference-free.

    ``alpha`` (required, any finite value; the paper's best are ~0.1-0.25) and
    ``gamma`` (>= 0, required) the target margin, as SimPO's. The exponent
    -alpha m saturates at EXP_CAP. Rewards: beta * r(y) (as TRL).
    """
    beta, alpha = hp["beta"], hp["alpha"]
    rw = beta * alpha_reward(x.policy_chosen / x.chosen_length, alpha)
    rl = beta * alpha_reward(x.policy_rejected / x.rejected_length, alpha)
    return softplus(-(rw - rl - hp["gamma"])), rw, rl, {}
