"""Preference-optimization objectives (DPO, LN-DPO, SimPO, IPO, ...) in JAX.

Usage::

    from lnpo import losses

    logps = losses.PairLogps(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                             chosen_tokens, rejected_tokens)          # each [B]
    loss, metrics = losses.get("ln_dpo")(logps, beta=2.0)             # loss: f32 [B]
    total = loss.mean()

    both = losses.combine({"dpo": (1.0, {"beta": 0.1}), "nll": (0.2, {})})
    loss, metrics = both(logps)

Public API
----------
* :class:`PairLogps` -- the input pytree (NamedTuple): ``policy_chosen``,
  ``policy_rejected``, ``ref_chosen``, ``ref_rejected`` (summed completion
  log-probs, ``[B]``; the ``ref_*`` fields may be None for reference-free
  objectives), ``chosen_tokens``, ``rejected_tokens`` (completion lengths), an
  optional ``valid`` mask (padding pairs of a partial batch: loss 0, and left out of
  what couples the batch, such as ``aot``'s sorting and ``bco_pair``'s mean reward),
  and the statistics beyond the sums that some objectives need (``shared``,
  ``sampled``, ``aligned``: :class:`SequenceStats`; ``label``), None otherwise.
* :func:`needs(name) <needs>` -- those statistics, e.g. ``("shared",)`` for
  ``ld_dpo``, ``()`` for ``dpo``; the train step computes exactly them
  (``lnpo.train.steps.pair_statistics``), so an objective pays only for what it reads.
* :func:`get(name) <get>` -> ``fn(logps, **hparams) -> (per_pair_loss, metrics)``,
  also reachable as a module attribute (``lnpo.losses.ln_dpo is get("ln_dpo")``);
  :func:`names` (sorted); :func:`requires_reference`; :func:`hparams_of`
  (``{hparam: default or REQUIRED}``); :func:`hparam_ranges`;
  :func:`validate(name, hparams) <validate>` (the config-time check, returns the
  hparams with defaults filled in); :func:`combine`.

Objectives and hyperparameters (``beta`` is always required, see below)
------------------------------------------------------------------------
TRL names are TRL 1.16's (``DPOConfig.loss_type`` unless said otherwise;
CPO and ORPO live in ``trl.experimental``); tests/losses/test_trl_parity.py runs
TRL's own loss code for every row marked with a TRL name.

================= ===================================== =========================================
name              hyperparameters (default)             TRL 1.16 equivalent
================= ===================================== =========================================
dpo               beta, label_smoothing (0)             sigmoid (ls = 0; 1.16's sigmoid has no
                                                        label smoothing, cDPO is lnpo's)
ln_dpo            beta                                  sigmoid_norm
ld_dpo            beta, alpha in [0, 1]                 sigmoid with ld_alpha = alpha
sampo             beta                                  -- (SamPO; needs an in-step reference)
<name>_wpo        as <name>                             <name>'s loss_type, use_weighting=True
<name>_forward_kl as <name>                             <name>'s loss_type, f_divergence_type=
                                                        "forward_kl"
<name>_js         as <name>                             ... "js_divergence"
<name>_alpha_div  as <name>, f_alpha in (0, 1)          ... "alpha_divergence",
                                                        f_alpha_divergence_coef = 1 - f_alpha
ipo               beta                                  ipo (length-averaged)
robust            beta, label_smoothing (0)             robust
hinge             beta                                  hinge
rdpo              beta, alpha                           --
rpo               beta, alpha                           ["sigmoid", "sft"], loss_weights [1, alpha]
                                                        (sft averages over the batch's tokens,
                                                        rpo per pair)
exo_pair          beta, label_smoothing (1e-3, > 0)     exo_pair
nca_pair          beta                                  nca_pair
bco_pair          beta, delta (None: batch mean reward) bco_pair with delta = 0 (no running mean)
sppo_hard         beta                                  sppo_hard
aot               beta, label_smoothing (0)             aot
aot_unpaired      beta, label_smoothing (0)             aot_unpaired
apo_zero          beta                                  apo_zero
apo_down          beta                                  apo_down
discopop          beta, tau (0.05)                      discopop (discopop_tau)
fdpo_reverse_kl   beta                                  f_divergence_type="reverse_kl" (= sigmoid)
fdpo_forward_kl   beta                                  f_divergence_type="forward_kl"
fdpo_js           beta                                  f_divergence_type="js_divergence"
fdpo_alpha        beta, alpha in (0, 1)                 "alpha_divergence",
                                                        f_alpha_divergence_coef = 1 - alpha
kto               beta, desirable_weight (1),           KTOTrainer loss_type="kto"
                  undesirable_weight (1)
apo_zero_unpaired beta                                  KTOTrainer loss_type="apo_zero_unpaired"
simpo             beta, gamma (reference-free)          CPOTrainer loss_type="simpo"
alphapo           beta, alpha, gamma (reference-free)   CPOTrainer loss_type="alphapo" (alpha)
cpo               beta, nll_weight (1) (reference-free) CPOTrainer loss_type="sigmoid"
orpo              lam (reference-free)                  ORPOTrainer (its beta)
nll               none (reference-free)                 --
================= ===================================== =========================================

``<name>_wpo`` exists for every reference-based pairwise objective but ``aot``
and ``aot_unpaired`` (which sort the batch; TRL refuses them too). The
f-divergence siblings (:mod:`lnpo.losses.divergence`: every log-ratio the loss
reads replaced by an f-divergence's score, rewards unchanged) exist where TRL
1.16 allows ``f_divergence_type``: ``ln_dpo``, ``ld_dpo``, ``hinge``, ``ipo``,
``exo_pair``, ``robust``, ``discopop``, ``rpo`` (``dpo``'s are ``fdpo_*``), and
have ``_wpo`` siblings too (``ipo_js_wpo``). ``kto`` and
``apo_zero_unpaired`` take unpaired batches (``PairLogps.label``; see
:mod:`lnpo.losses.unpaired`).

Each objective's docstring (``help(losses.get(name))``) gives its formula and
paper. Defaults exist only where the literature fixes one; ``beta`` never has
one because its scale depends on the objective (per-sequence log-ratios in DPO
want ~0.1, per-token ones in LN-DPO/SimPO ~1-10), so configs must state it.
Other required hyperparameters: ``gamma`` (simpo, alphapo), ``alpha`` (rdpo,
rpo, fdpo_alpha, ld_dpo, alphapo), ``f_alpha`` (``<name>_alpha_div``), ``lam`` (orpo).

Validation
----------
Unknown objective names, unknown / missing / out-of-range hyperparameters and a
missing reference for a reference-based objective raise ``ValueError`` naming
the valid choices, in Python, before anything is traced. Hyperparameters reach
the jitted core as float32 scalars (traced), so changing beta does not
recompile; a hyperparameter that is itself traced (the caller's own jit) is
passed through with its range unchecked.

Metrics (float32 ``[B]``, per pair; the trainer averages them)
---------------------------------------------------------------
``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
``rewards/accuracies`` (the implicit rewards as the objective defines them:
beta * log-ratio for DPO-like objectives, per token where the objective
normalizes by length, e.g. ``ln_dpo`` beta * a / |y|, ``simpo`` beta * mean
log pi), ``logps/chosen``, ``logps/rejected`` (summed policy log-probs),
``logps/chosen_per_token``, ``logps/rejected_per_token``; some objectives add
more (``nll_loss``, ORPO's ``log_odds_*``). Metrics are under stop_gradient.

Numerics
--------
* Everything is computed in float32 whatever the input dtype (bf16 accepted).
* -log sigma(z) is ``softplus(-z)``: losses and gradients are finite at
  log-ratios of +-1e4. Exponential terms (forward-KL / alpha f-DPO, DiscoPOP
  with tau > 1) saturate at exp(50) instead of overflowing; the f-divergence
  siblings' exponential scores at exp(40) (IPO squares them), keeping the
  margin's sign when both terms saturate.
* A zero-length completion is treated as length 1 in every normalization: its
  normalized log-ratio equals its (zero) sum, so nothing divides by zero.
  ``rdpo`` uses the raw counts.
* ``aot`` / ``aot_unpaired`` couple the batch (they sort it): entry i of their
  loss is sorted position i; the mean over entries is the batch loss.

This module imports only jax and numpy (no transformers, datasets or torch).
"""

# Registration order matters (the sibling modules wrap the objectives registered before them): not sorted.
# isort: off
from lnpo.losses import objectives as _objectives  # noqa: F401  (registers the objectives)
from lnpo.losses import length as _length  # noqa: F401  (LD-DPO, SamPO, AlphaPO)
from lnpo.losses import unpaired as _unpaired  # noqa: F401  (KTO, unpaired APO-zero)
from lnpo.losses import divergence as _divergence  # noqa: F401  (<name>_forward_kl/_js/_alpha_div siblings)
from lnpo.losses import weighting as _weighting  # noqa: F401  (<name>_wpo siblings; last: wraps the above)
# isort: on
from lnpo.losses._numerics import EXP_CAP, LOG_PROB_CEILING
from lnpo.losses._registry import (
    NEEDS,
    REQUIRED,
    Combined,
    PairLogps,
    SequenceStats,
    combine,
    get,
    hparam_ranges,
    hparams_of,
    names,
    needs,
    requires_reference,
    validate,
)


def __getattr__(name: str):
    """``lnpo.losses.dpo`` etc.: each objective is also a module attribute (``get(name)``)."""
    if name in names():
        return get(name)
    raise AttributeError(f"module 'lnpo.losses' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(names()))


__all__ = [
    "EXP_CAP",
    "LOG_PROB_CEILING",
    "NEEDS",
    "REQUIRED",
    "Combined",
    "PairLogps",
    "SequenceStats",
    "combine",
    "get",
    "hparam_ranges",
    "hparams_of",
    "names",
    "needs",
    "requires_reference",
    "validate",
]
