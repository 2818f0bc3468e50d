"""Numerical building blocks shared by the objectives (float32, overflow-safe).

Everything here runs inside ``jax.jit``. Inputs of any float dtype (bf16
included) are cast to float32 first; every loss and metric is float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

# A per-token mean log-prob is clamped to at most this value before it enters
# log(1 - exp(.)) (ORPO's odds): at exactly 0 (a zero-length completion, or a
# completion the model is certain of) the odds are infinite.
LOG_PROB_CEILING = -1e-6

# Exponentials of log-ratios (the common scale of the forward-KL /
# alpha-divergence f-DPO terms, DiscoPOP's exponential branch for tau > 1)
# saturate at exp(EXP_CAP) ~ 5.2e21 instead of overflowing, so losses stay
# finite; cf. TRL's ``cap_exp``, which caps at log(float max), where one further
# multiplication can still overflow.
EXP_CAP = 50.0

_LN2 = 0.6931471805599453

softplus = jax.nn.softplus  # log(1 + e^x), never overflows
log_sigmoid = jax.nn.log_sigmoid  # -softplus(-x)
sigmoid = jax.nn.sigmoid


class Inputs(NamedTuple):
    """float32 view of :class:`lnpo.losses.PairLogps` inside the jitted core.

    ``*_tokens`` are the raw completion token counts; ``*_length`` the counts clamped to
    >= 1, used for every length normalization (a zero-length completion is
    treated as length 1: its normalized log-prob equals its (zero) sum).
    """

    policy_chosen: jax.Array  # policy log pi(y_w), summed
    policy_rejected: jax.Array  # policy log pi(y_l)
    ref_chosen: jax.Array | None  # reference log pi_ref(y_w), or None
    ref_rejected: jax.Array | None
    chosen_tokens: jax.Array  # |y_w| as float32 (raw)
    rejected_tokens: jax.Array
    chosen_length: jax.Array  # max(|y_w|, 1)
    rejected_length: jax.Array
    valid: jax.Array | None = None  # bool [B]: a real pair (None: all are)
    shared: Any = None  # SequenceStats of f32 [B] (LD-DPO), or None
    sampled: Any = None  # SequenceStats (SamPO), or None
    aligned: Any = None  # SequenceStats, policy only (WPO), or None
    label: jax.Array | None = None  # bool [B]: desirable (unpaired / KTO batches), or None
    f_margin: Any = None  # (a_w, a_l, c_w, c_l) -> margin of f-divergence scores (lnpo.losses.divergence), or None

    def margin(self, a_w=None, a_l=None, c_w=1.0, c_l=1.0) -> jax.Array:
        """c_w g(a_w) - c_l g(a_l): the margin of the log-ratios (default ``self.a_w``, ``self.a_l``)
        as an f-divergence scores them (TRL's ``chosen_scores - rejected_scores``); c_* are per-pair
        scales (1 / L(y) for length-normalized objectives). g(a) = a (reverse KL, plain DPO) unless an
        f-divergence sibling set ``f_margin`` (:mod:`lnpo.losses.divergence`)."""
        a_w = self.a_w if a_w is None else a_w
        a_l = self.a_l if a_l is None else a_l
        if self.f_margin is None:
            return c_w * a_w - c_l * a_l
        return self.f_margin(a_w, a_l, c_w, c_l)

    @property
    def a_w(self) -> jax.Array:
        """Chosen log-ratio log pi(y_w)/pi_ref(y_w)."""
        return self.policy_chosen - self.ref_chosen

    @property
    def a_l(self) -> jax.Array:
        """Rejected log-ratio log pi(y_l)/pi_ref(y_l)."""
        return self.policy_rejected - self.ref_rejected


def prepare(logps) -> Inputs:
    """Cast a ``PairLogps`` to float32 :class:`Inputs` (call inside jit)."""

    def f32(v):
        return None if v is None else jnp.asarray(v).astype(jnp.float32)

    def stats(s):
        return None if s is None else type(s)(*(f32(v) for v in s))

    chosen_tokens = f32(logps.chosen_tokens)
    rejected_tokens = f32(logps.rejected_tokens)
    return Inputs(
        policy_chosen=f32(logps.policy_chosen),
        policy_rejected=f32(logps.policy_rejected),
        ref_chosen=f32(logps.ref_chosen),
        ref_rejected=f32(logps.ref_rejected),
        chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens,
        chosen_length=jnp.maximum(chosen_tokens, 1.0),
        rejected_length=jnp.maximum(rejected_tokens, 1.0),
        valid=None if logps.valid is None else jnp.asarray(logps.valid) != 0,
        shared=stats(logps.shared),
        sampled=stats(logps.sampled),
        aligned=stats(logps.aligned),
        label=None if logps.label is None else jnp.asarray(logps.label) != 0,
    )


def sort_valid_first(v: jax.Array, valid: jax.Array | None) -> jax.Array:
    """``v`` sorted ascending, its padding entries (``valid`` False) moved to the end as +inf."""
    return jnp.sort(v if valid is None else jnp.where(valid, v, jnp.inf))


def place_sorted_losses(loss_sorted: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Sorted-position losses of a coupled objective -> per-pair array: the k-th
    real pair (in batch order) gets sorted position k's loss; padding pairs get the
    positions past the real ones, which the registry then sets to 0 (as it does for
    every objective). With every pair real (``valid`` None) entry i is position i."""
    if valid is None:
        return loss_sorted
    real_first = jnp.argsort(~valid, stable=True)  # indices of real pairs, in order, then padding
    return jnp.zeros_like(loss_sorted).at[real_first].set(loss_sorted)


def masked_mean(v: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Mean of ``v`` over real pairs (all of them when ``valid`` is None)."""
    if valid is None:
        return jnp.mean(v)
    return jnp.sum(jnp.where(valid, v, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x < 0, accurate on the whole range (Maechler 2012).

    Callers keep x <= LOG_PROB_CEILING so both branches of the ``where`` are
    finite (no NaN leaks into the gradient of the unused branch).
    """
    return jnp.where(x > -_LN2, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def capped_exp(x: jax.Array) -> jax.Array:
    """exp(min(x, EXP_CAP)): finite for any finite x."""
    return jnp.exp(jnp.minimum(x, EXP_CAP))
