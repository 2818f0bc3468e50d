"""Objectives on unpaired (thumbs up / thumbs down) data: KTO and unpaired APO-zero.

An unpaired batch travels as :class:`~lnpo.losses.PairLogps` (so every layout,
the iterator and the reference cache serve it unchanged): entry i is one
example, ``*_chosen`` the log-probs of its completion y under its prompt x,
``*_rejected`` those of its *KL completion* y' (another example's completion
under x, ``lnpo.data.unpaired``), and ``label`` says whether y is desirable.
"""

from __future__ import annotations

import jax

from lnpo.losses._numerics import masked_mean, sigmoid
from lnpo.losses._registry import Param, register
from lnpo.losses.objectives import BETA

WEIGHT = Param(default=1.0, low=0.0)


@register("kto", reference=True, needs=("label",), beta=BETA, desirable_weight=WEIGHT, undesirable_weight=WEIGHT)
def _kto(x, hp):
    """KTO (Ethayarajh et al. 2024, "KTO: model alignment as prospect theoretic
    optimization", eq. 7); TRL ``KTOTrainer`` (``loss_type="kto"``).

    With the example's log-ratio a = log pi(y|x) - log pi_ref(y|x) and the batch
    KL baseline z = max(0, mean_j [log pi(y'_j|x_j) - log pi_ref(y'_j|x_j)])
    over the batch's (real) KL completions y', under stop_gradient (as TRL):
    L = lambda_D (1 - sigma(beta (a - z)))   for a desirable y,
    L = lambda_U (1 - sigma(beta (z - a)))   for an undesirable y.

    ``desirable_weight`` lambda_D and ``undesirable_weight`` lambda_U (>= 0,
    default 1; the paper keeps lambda_D n_D / (lambda_U n_U) in [1, 4/3]). The
    baseline couples the batch (one micro-batch; TRL: one device batch, averaged
    over devices). Rewards: chosen = beta * a (the example), rejected = beta * z
    (the baseline it is compared with); extra metrics ``kl`` (z) and
    ``label`` (1 desirable).
    """
    beta = hp["beta"]
    a = x.a_w
    z = jax.lax.stop_gradient(jax.numpy.maximum(masked_mean(x.a_l, x.valid), 0.0))
    loss = jax.numpy.where(x.label, hp["desirable_weight"] * sigmoid(-beta * (a - z)),
                           hp["undesirable_weight"] * sigmoid(-beta * (z - a)))
    extra = {"kl": z, "label": x.label.astype(jax.numpy.float32)}
    return loss, beta * a, beta * z, extra


@register("apo_zero_unpaired", reference=True, needs=("label",), beta=BETA)
def _apo_zero_unpaired(x, hp):
    """APO-zero, unpaired (D'Oosterlinck et al. 2024, "Anchored preference
    optimization and contrastive revisions", eq. 7 per example); TRL
    ``KTOTrainer(loss_type="apo_zero_unpaired")``.

    L = 1 - sigma(beta a) for a desirable y, sigma(beta a) for an undesirable one
    (a = log pi(y|x) - log pi_ref(y|x)); the KL completion is not used.
    Rewards: chosen = beta * a, rejected = 0 (the anchor); extra ``label``.
    """
    beta = hp["beta"]
    r = beta * x.a_w
    loss = jax.numpy.where(x.label, sigmoid(-r), sigmoid(r))
    return loss, r, jax.numpy.zeros_like(r), {"label": x.label.astype(jax.numpy.float32)}
