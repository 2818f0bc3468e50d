"""The objectives: pure float32 cores, registered with their hyperparameters.

Notation (per pair, all float32 inside the core):

* ``a_w = log pi(y_w) - log pi_ref(y_w)``, ``a_l`` likewise (summed log-ratios);
* ``m = a_w - a_l`` (the DPO margin);
* ``|y|`` the completion token count, ``L(y) = max(|y|, 1)`` the length used in
  every normalization (a zero-length completion counts as length 1);
* ``sigma`` the logistic function; ``-log sigma(z)`` is computed as
  ``softplus(-z)``, which never overflows.

Each core returns ``(per_pair_loss, rewards_chosen, rewards_rejected, extra)``;
:mod:`lnpo.losses._registry` adds the standard metrics. Rewards follow TRL:
``beta * a`` unless the objective normalizes by length or has no reference, in
which case its docstring says what it uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lnpo.losses._numerics import (
    LOG_PROB_CEILING,
    capped_exp,
    log1mexp,
    log_sigmoid,
    masked_mean,
    place_sorted_losses,
    sigmoid,
    softplus,
    sort_valid_first,
)
from lnpo.losses._registry import Param, register

# ----------------------------------------------------------------------------- hyperparameters
# beta has no default anywhere: its scale depends on the objective (DPO ~0.1,
# LN-DPO / SimPO ~1-10 because their log-ratios are per token), so a config must
# state it. Defaults exist only where the literature fixes one.
BETA = Param(low=0.0, low_inclusive=False)
LABEL_SMOOTHING = Param(default=0.0, low=0.0, high=0.5, high_inclusive=False)
EXO_EPSILON = Param(default=1e-3, low=0.0, high=0.5, low_inclusive=False, high_inclusive=False)
NONNEG = Param(low=0.0)  # required, >= 0
OPEN_UNIT = Param(low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
NLL_WEIGHT = Param(default=1.0, low=0.0)
TAU = Param(default=0.05, low=0.0, low_inclusive=False)
DELTA = Param(default=None, allow_none=True)


def _dpo_rewards(x, beta):
    return beta * x.a_w, beta * x.a_l


def _nll(x):
    """Mean NLL of the chosen completion, -log pi(y_w) / L(y_w)."""
    return -x.policy_chosen / x.chosen_length


def _sigmoid_loss(z, ls):
    """Conservative logistic loss (1-ls) * -log sigma(z) + ls * -log sigma(-z)."""
    return (1.0 - ls) * softplus(-z) + ls * softplus(z)


# ----------------------------------------------------------------------------- DPO family


@register("dpo", reference=True, beta=BETA, label_smoothing=LABEL_SMOOTHING)
def _dpo(x, hp):
    """DPO (Rafailov et al. 2023), with conservative DPO (cDPO, Mitchell 2023).

    L = -(1 - ls) log sigma(beta m) - ls log sigma(-beta m),
    m = log pi/pi_ref(y_w) - log pi/pi_ref(y_l).

    ``label_smoothing`` (ls, default 0, in [0, 0.5)) is the assumed probability
    that a label is flipped; ls = 0 is plain DPO. TRL: ``loss_type="sigmoid"``.
    Rewards: beta * log pi/pi_ref(y).
    """
    beta = hp["beta"]
    return _sigmoid_loss(beta * (x.a_w - x.a_l), hp["label_smoothing"]), *_dpo_rewards(x, beta), {}


@register("ln_dpo", reference=True, beta=BETA)
def _ln_dpo(x, hp):
    """Length-normalized DPO (LN-DPO).

    L = -log sigma(beta * [a_w / L(y_w) - a_l / L(y_l)]),
    the per-token log-ratio margin of "A Practical Analysis of Human Alignment
    with *PO" (Ahrabian et al., Findings of NAACL 2025). Equals DPO with
    beta / L when both completions have length L.
    Rewards: beta * a / L(y) (per-token log-ratio).
    """
    beta = hp["beta"]
    rewards_chosen, rewards_rejected = beta * x.a_w / x.chosen_length, beta * x.a_l / x.rejected_length
    loss = softplus(-beta * x.margin(c_w=1.0 / x.chosen_length, c_l=1.0 / x.rejected_length))
    return loss, rewards_chosen, rewards_rejected, {}


@register("robust", reference=True, beta=BETA, label_smoothing=LABEL_SMOOTHING)
def _robust(x, hp):
    """Robust DPO (Chowdhury et al. 2024, "Provably robust DPO"); TRL ``"robust"``.

    L = [-(1 - ls) log sigma(beta m) + ls log sigma(-beta m)] / (1 - 2 ls),
    an unbiased estimate of the DPO loss under labels flipped with probability
    ls (default 0, in [0, 0.5); ls = 0 is DPO). Rewards: beta * log-ratio.
    """
    beta, ls = hp["beta"], hp["label_smoothing"]
    z = beta * x.margin()
    loss = ((1.0 - ls) * softplus(-z) - ls * softplus(z)) / (1.0 - 2.0 * ls)
    return loss, *_dpo_rewards(x, beta), {}


@register("hinge", reference=True, beta=BETA)
def _hinge(x, hp):
    """Hinge loss on the DPO margin (SLiC, Zhao et al. 2023; RSO, Liu et al. 2024).

    L = max(0, 1 - beta m); TRL ``"hinge"``. Rewards: beta * log-ratio.
    """
    beta = hp["beta"]
    return jax.nn.relu(1.0 - beta * x.margin()), *_dpo_rewards(x, beta), {}


@register("ipo", reference=True, beta=BETA)
def _ipo(x, hp):
    """IPO (Azar et al. 2023, "A general theoretical paradigm...", eq. 17).

    L = (a_w / L(y_w) - a_l / L(y_l) - 1 / (2 beta))^2, with log-probs averaged
    over completion tokens as TRL's ``"ipo"`` does (beta is the paper's tau).
    Rewards: beta * a / L(y).
    """
    beta = hp["beta"]
    loss = jnp.square(x.margin(c_w=1.0 / x.chosen_length, c_l=1.0 / x.rejected_length) - 0.5 / beta)
    return loss, beta * x.a_w / x.chosen_length, beta * x.a_l / x.rejected_length, {}


@register("rdpo", reference=True, beta=BETA, alpha=NONNEG)
def _rdpo(x, hp):
    """Length-regularized DPO (R-DPO; Park et al. 2024, "Disentangling length
    from quality in direct preference optimization", eq. 9).

    L = -log sigma(beta m + alpha (|y_w| - |y_l|)).

    Sign: the paper maximizes E[r] - alpha |y| under the KL constraint, so its
    implicit reward is beta * log-ratio + alpha |y| and the length term enters
    the sigmoid with a plus: a longer chosen response already "explains" part of
    the preference, so DPO is pushed less to reward length. ``alpha`` (>= 0,
    required; alpha = 0 is DPO) uses the raw token counts. Rewards: beta *
    log-ratio (the DPO part).
    """
    beta = hp["beta"]
    z = beta * (x.a_w - x.a_l) + hp["alpha"] * (x.chosen_tokens - x.rejected_tokens)
    return softplus(-z), *_dpo_rewards(x, beta), {}


@register("rpo", reference=True, beta=BETA, alpha=NONNEG)
def _rpo(x, hp):
    """RPO: DPO plus an NLL term on the chosen response (Pang et al. 2024,
    "Iterative reasoning preference optimization"; TRL ``rpo_alpha``).

    L = -log sigma(beta m) + alpha * (-log pi(y_w) / L(y_w)).

    The NLL is the chosen response's per-token mean for each pair (TRL averages
    tokens over the whole batch instead). Extra metric ``nll_loss``.
    Rewards: beta * log-ratio.
    """
    beta = hp["beta"]
    nll = _nll(x)
    loss = softplus(-beta * x.margin()) + hp["alpha"] * nll
    return loss, *_dpo_rewards(x, beta), {"nll_loss": nll}


@register("exo_pair", reference=True, beta=BETA, label_smoothing=EXO_EPSILON)
def _exo_pair(x, hp):
    """EXO, pairwise (Ji et al. 2024, "Towards efficient exact optimization of
    language model alignment", eq. 16); TRL ``"exo_pair"``.

    With z = beta m and eps = ``label_smoothing`` (default 1e-3, in (0, 0.5)):
    L = sigma(z) [log sigma(z) - log(1 - eps)] + sigma(-z) [log sigma(-z) - log eps],
    the KL divergence from the model's preference distribution (sigma(z),
    sigma(-z)) to the smoothed labels (1 - eps, eps). Rewards: beta * log-ratio.
    """
    beta, eps = hp["beta"], hp["label_smoothing"]
    z = beta * x.margin()
    loss = sigmoid(z) * (log_sigmoid(z) - jnp.log1p(-eps)) + sigmoid(-z) * (
        log_sigmoid(-z) - jnp.log(eps)
    )
    return loss, *_dpo_rewards(x, beta), {}


@register("nca_pair", reference=True, beta=BETA)
def _nca_pair(x, hp):
    """NCA, pairwise (Chen et al. 2024, "Noise contrastive alignment of language
    models with explicit rewards"); TRL ``"nca_pair"``.

    With r = beta * log-ratio:
    L = -log sigma(r_w) - 0.5 log sigma(-r_w) - 0.5 log sigma(-r_l).
    Rewards: r.
    """
    rw, rl = _dpo_rewards(x, hp["beta"])
    return softplus(-rw) + 0.5 * softplus(rw) + 0.5 * softplus(rl), rw, rl, {}


@register("bco_pair", reference=True, beta=BETA, delta=DELTA)
def _bco_pair(x, hp):
    """BCO, pairwise (Jung et al. 2024, "Binary classifier optimization for
    large language model alignment"); TRL ``"bco_pair"``.

    With r = beta * log-ratio and a reward shift delta:
    L = -log sigma(r_w - delta) - log sigma(-(r_l - delta)).

    ``delta`` (default None): None uses the batch mean of all 2B rewards (of
    the real pairs, see ``PairLogps.valid``), under stop_gradient; TRL keeps a
    running mean across steps instead, which a trainer can pass here as a float.
    Rewards: r.
    """
    rw, rl = _dpo_rewards(x, hp["beta"])
    delta = hp["delta"]
    if delta is None:
        delta = jax.lax.stop_gradient(0.5 * (masked_mean(rw, x.valid) + masked_mean(rl, x.valid)))
    return softplus(-(rw - delta)) + softplus(rl - delta), rw, rl, {}


@register("sppo_hard", reference=True, beta=BETA)
def _sppo_hard(x, hp):
    """SPPO with hard labels (Wu et al. 2024, "Self-play preference
    optimization", eq. 4.7 with P = 1 for the winner, 0 for the loser); TRL
    ``"sppo_hard"``.

    L = (a_w - 1 / (2 beta))^2 + (a_l + 1 / (2 beta))^2. Rewards: beta * a.
    """
    beta = hp["beta"]
    loss = jnp.square(x.a_w - 0.5 / beta) + jnp.square(x.a_l + 0.5 / beta)
    return loss, *_dpo_rewards(x, beta), {}


def _aot_sorted_loss(delta, valid, hp):
    """AOT's loss of sorted differences; positions past the real pairs (inf - inf) are dropped."""
    if valid is not None:
        delta = jnp.where(jnp.arange(delta.shape[0]) < jnp.sum(valid), delta, 0.0)
    return place_sorted_losses(_sigmoid_loss(hp["beta"] * delta, hp["label_smoothing"]), valid)


@register("aot", reference=True, beta=BETA, label_smoothing=LABEL_SMOOTHING)
def _aot(x, hp):
    """AOT, paired (Melnyk et al. 2024, "Distributional preference alignment of
    LLMs via optimal transport"); TRL ``"aot"``.

    Sort the batch's policy log-ratios p = log pi(y_w) - log pi(y_l) and
    reference log-ratios q = log pi_ref(y_w) - log pi_ref(y_l) separately
    (ascending), d_(i) = p_(i) - q_(i), and
    L_(i) = -(1 - ls) log sigma(beta d_(i)) - ls log sigma(-beta d_(i)).

    The loss couples the batch: entry i of the returned loss belongs to sorted
    position i, not to pair i (its mean is the batch loss). With
    ``PairLogps.valid`` only the real pairs are sorted, the k-th real pair gets
    position k's loss and padding pairs 0. Metrics are per pair. Rewards:
    beta * log-ratio.
    """
    p = sort_valid_first(x.policy_chosen - x.policy_rejected, x.valid)
    q = sort_valid_first(x.ref_chosen - x.ref_rejected, x.valid)
    return _aot_sorted_loss(p - q, x.valid, hp), *_dpo_rewards(x, hp["beta"]), {}


@register("aot_unpaired", reference=True, beta=BETA, label_smoothing=LABEL_SMOOTHING)
def _aot_unpaired(x, hp):
    """AOT, unpaired (Melnyk et al. 2024, "Distributional preference alignment
    of LLMs via optimal transport"); TRL ``"aot_pair"``.

    Sort the batch's chosen log-ratios a_w and rejected log-ratios a_l
    separately (ascending), d_(i) = a_w(i) - a_l(i), and
    L_(i) = -(1 - ls) log sigma(beta d_(i)) - ls log sigma(-beta d_(i)):
    first-order stochastic dominance of the chosen reward distribution.
    Entry i of the loss is sorted position i (the batch is coupled; padding
    pairs as in ``aot``); metrics are per pair. Rewards: beta * log-ratio.
    """
    d = sort_valid_first(x.a_w, x.valid) - sort_valid_first(x.a_l, x.valid)
    return _aot_sorted_loss(d, x.valid, hp), *_dpo_rewards(x, hp["beta"]), {}


@register("apo_zero", reference=True, beta=BETA)
def _apo_zero(x, hp):
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored preference optimization
    and contrastive revisions", eq. 7); TRL ``"apo_zero"``.

    L = 1 - sigma(beta a_w) + sigma(beta a_l): raise the chosen likelihood,
    lower the rejected one (chosen outputs better than the model's own).
    Rewards: beta * a.
    """
    rw, rl = _dpo_rewards(x, hp["beta"])
    return sigmoid(-rw) + sigmoid(rl), rw, rl, {}


@register("apo_down", reference=True, beta=BETA)
def _apo_down(x, hp):
    """APO-down (D'Oosterlinck et al. 2024, "Anchored preference optimization
    and contrastive revisions", eq. 8); TRL ``"apo_down"``.

    L = sigma(beta a_w) + 1 - sigma(beta (a_w - a_l)): lower both likelihoods,
    the rejected one more (chosen outputs worse than the model's own).
    Rewards: beta * a.
    """
    rw, rl = _dpo_rewards(x, hp["beta"])
    return sigmoid(rw) + sigmoid(-(rw - rl)), rw, rl, {}


@register("discopop", reference=True, beta=BETA, tau=TAU)
def _discopop(x, hp):
    """DiscoPOP / log-ratio modulated loss (Chris Lu et al. 2024, "Discovering
    preference optimization algorithms with and for large language models",
    eq. 5); TRL ``"discopop"``.

    With z = beta m and w = sigma(z / tau):
    L = (1 - w) * (-log sigma(z)) + w * exp(-z).

    ``tau`` defaults to 0.05 (the paper's and TRL's ``discopop_tau``). The
    exponential branch is computed as exp(-z + log sigma(z / tau)), which is
    bounded for tau < 1; for tau > 1 it saturates at exp(EXP_CAP).
    Rewards: beta * log-ratio.
    """
    beta, tau = hp["beta"], hp["tau"]
    z = beta * x.margin()
    loss = sigmoid(-z / tau) * softplus(-z) + capped_exp(-z + log_sigmoid(z / tau))
    return loss, *_dpo_rewards(x, beta), {}


# ----------------------------------------------------------------------------- f-divergence DPO


@register("fdpo_reverse_kl", reference=True, beta=BETA)
def _fdpo_reverse_kl(x, hp):
    """f-DPO with the reverse KL divergence (Wang et al. 2024, "Beyond reverse
    KL: generalizing DPO with diverse divergence constraints"): f'(u) = log u + 1.

    L = -log sigma(beta [f'(u_w) - f'(u_l)]) = -log sigma(beta m), i.e. DPO;
    TRL ``f_divergence_type="reverse_kl"``. Rewards: beta * log-ratio.
    """
    beta = hp["beta"]
    return softplus(-beta * (x.a_w - x.a_l)), *_dpo_rewards(x, beta), {}


def _fdpo_alpha_loss(x, beta, alpha):
    # beta * [f'(u_w) - f'(u_l)] with f'(u) = (1 - u^-alpha) / alpha equals
    # e^{x_l} - e^{x_w}, x = log(beta/alpha) - alpha a. Factor out the common
    # scale e^M, M = max(x_l, x_w) (under stop_gradient: the product does not
    # depend on M), and saturate only that scale at exp(EXP_CAP): the sign and
    # the relative size of the two terms survive, so two huge but different
    # terms still give a huge loss of the right sign, and equal ones give log 2.
    # The bracket's value comes from expm1 of d = x_l - x_w = alpha * m (no
    # cancellation when the terms are close, e.g. small alpha); its gradient from
    # the plain difference (exact, also at d = 0).
    c = jnp.log(beta / alpha)
    xw, xl = c - alpha * x.a_w, c - alpha * x.a_l
    m = jax.lax.stop_gradient(jnp.maximum(xw, xl))
    plain = jnp.exp(xl - m) - jnp.exp(xw - m)
    d = alpha * (x.a_w - x.a_l)
    accurate = jnp.where(d >= 0, -jnp.expm1(-jnp.maximum(d, 0.0)), jnp.expm1(jnp.minimum(d, 0.0)))
    bracket = plain + jax.lax.stop_gradient(accurate - plain)
    return softplus(-capped_exp(m) * bracket)


@register("fdpo_forward_kl", reference=True, beta=BETA)
def _fdpo_forward_kl(x, hp):
    """f-DPO with the forward KL divergence (Wang et al. 2024, "Beyond reverse
    KL"): f(u) = -log u, f'(u) = -1/u, the alpha -> 1 member of fdpo_alpha.

    L = -log sigma(beta [exp(-a_l) - exp(-a_w)]) with u = pi/pi_ref = exp(a).
    The common scale of the two exponentials saturates at exp(EXP_CAP) (cf.
    TRL's ``cap_exp``) so the loss stays finite at log-ratios of -1e4; the sign
    of the difference is kept. Rewards: beta * log-ratio.
    """
    beta = hp["beta"]
    return _fdpo_alpha_loss(x, beta, jnp.float32(1.0)), *_dpo_rewards(x, beta), {}


@register("fdpo_js", reference=True, beta=BETA)
def _fdpo_js(x, hp):
    """f-DPO with the Jensen-Shannon divergence (Wang et al. 2024, "Beyond
    reverse KL"): f'(u) = log(2u / (1 + u)); TRL ``f_divergence_type="js_divergence"``.

    L = -log sigma(beta [log sigma(a_w) - log sigma(a_l)])  (log 2 cancels;
    log(2u/(1+u)) = log 2 + log sigma(a)). Rewards: beta * log-ratio.
    """
    beta = hp["beta"]
    logits = log_sigmoid(x.a_w) - log_sigmoid(x.a_l)
    return softplus(-beta * logits), *_dpo_rewards(x, beta), {}


@register("fdpo_alpha", reference=True, beta=BETA, alpha=OPEN_UNIT)
def _fdpo_alpha(x, hp):
    """f-DPO with the alpha-divergence (Wang et al. 2024, "Beyond reverse KL"):
    f'(u) = (1 - u^-alpha) / alpha; TRL ``f_divergence_type="alpha_divergence"``.

    L = -log sigma((beta / alpha) [exp(-alpha a_l) - exp(-alpha a_w)]),
    alpha in (0, 1) (required; alpha -> 0 is reverse KL / DPO, alpha -> 1
    forward KL). The exponentials' common scale saturates at exp(EXP_CAP), as in
    fdpo_forward_kl. Rewards: beta * log-ratio.
    """
    beta = hp["beta"]
    return _fdpo_alpha_loss(x, beta, hp["alpha"]), *_dpo_rewards(x, beta), {}


# ----------------------------------------------------------------------------- reference-free


@register("simpo", reference=False, beta=BETA, gamma=NONNEG)
def _simpo(x, hp):
    """SimPO (Meng et al. 2024, "SimPO: simple preference optimization with a
    reference-free reward").

    L = -log sigma(beta log pi(y_w) / L(y_w) - beta log pi(y_l) / L(y_l) - gamma);
    ignores the reference. ``gamma`` (>= 0, required) is the target reward
    margin (TRL ``CPOConfig.simpo_gamma``). Rewards: beta * per-token log pi.
    """
    beta = hp["beta"]
    rewards_chosen = beta * x.policy_chosen / x.chosen_length
    rewards_rejected = beta * x.policy_rejected / x.rejected_length
    return softplus(-(rewards_chosen - rewards_rejected - hp["gamma"])), rewards_chosen, rewards_rejected, {}


@register("cpo", reference=False, beta=BETA, nll_weight=NLL_WEIGHT)
def _cpo(x, hp):
    """CPO (Xu et al. 2024, "Contrastive preference optimization: pushing the
    boundaries of LLM performance in machine translation"); TRL ``CPOTrainer``.

    L = -log sigma(beta [log pi(y_w) - log pi(y_l)]) + nll_weight * (-log pi(y_w) / L(y_w)),
    reference-free. ``nll_weight`` defaults to 1 (the paper adds the NLL term
    unweighted; TRL ``cpo_alpha``). The NLL is the per-pair token mean.
    Extra metric ``nll_loss``. Rewards: beta * log pi(y) (summed, as TRL).
    """
    beta = hp["beta"]
    nll = _nll(x)
    rewards_chosen, rewards_rejected = beta * x.policy_chosen, beta * x.policy_rejected
    loss = softplus(-(rewards_chosen - rewards_rejected)) + hp["nll_weight"] * nll
    return loss, rewards_chosen, rewards_rejected, {"nll_loss": nll}


def _log_odds(mean_logp):
    # log(p / (1 - p)) for p = exp(mean_logp); mean_logp clamped below 0 so a
    # zero-length completion (mean 0, p = 1) gives large but finite odds.
    m = jnp.minimum(mean_logp, LOG_PROB_CEILING)
    return m - log1mexp(m)


@register("orpo", reference=False, lam=NONNEG)
def _orpo(x, hp):
    """ORPO (Hong et al. 2024, "ORPO: monolithic preference optimization
    without reference model"); TRL ``ORPOTrainer`` (whose ``beta`` is lam).

    With per-token mean log-probs m(y) = log pi(y) / L(y) and
    log odds(y) = m(y) - log(1 - exp(m(y))) (log1mexp, stable):
    L = -m(y_w) + lam * -log sigma(log odds(y_w) - log odds(y_l)).

    ``lam`` (>= 0, required; the paper's lambda, 0.1 in its experiments). m is
    clamped to <= -1e-6 inside the odds only. Extra metrics: ``nll_loss``,
    ``log_odds_ratio`` (log sigma of the odds difference), ``log_odds_chosen``
    (the odds difference). Rewards: lam * m(y) (as TRL).
    """
    lam = hp["lam"]
    mw, ml = x.policy_chosen / x.chosen_length, x.policy_rejected / x.rejected_length
    diff = _log_odds(mw) - _log_odds(ml)
    nll = -mw
    loss = nll + lam * softplus(-diff)
    extra = {"nll_loss": nll, "log_odds_ratio": log_sigmoid(diff), "log_odds_chosen": diff}
    return loss, lam * mw, lam * ml, extra


@register("nll", reference=False)
def _nll_objective(x, hp):
    """Mean negative log-likelihood of the chosen response (SFT on y_w).

    L = -log pi(y_w) / L(y_w). Meant as a component of :func:`combine`
    (e.g. DPO plus NLL). Rewards: per-token log pi(y) (there is no implicit
    reward; accuracies then say whether the chosen response is the likelier
    per token).
    """
    rewards_chosen, rewards_rejected = x.policy_chosen / x.chosen_length, x.policy_rejected / x.rejected_length
    return -rewards_chosen, rewards_chosen, rewards_rejected, {}
