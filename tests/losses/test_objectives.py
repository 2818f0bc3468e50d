"""Tests for lnpo.losses: the objectives of summed log-probs (no ``needs``).

Every such objective is checked against an independent float64 NumPy transcription
of its published formula (``REFERENCES`` below, written from the papers / TRL
formulas, never calling the library), its gradient against central finite
differences of that reference, and its behaviour under jit / vmap / grad, bf16
inputs, extreme log-ratios and zero-length completions.

All random batches have the same shape (B = 8) so each objective compiles once
per transformation.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnpo import losses
from lnpo.losses import PairLogps

B = 8
FIELDS = ("pc", "pr", "rc", "rr", "nc", "nr")

# ============================================================================ NumPy references
# float64; a zero-length completion counts as length 1 in normalizations (the
# documented convention).


def _L(n):
    return np.maximum(n, 1.0)


def _logsig(x):
    return -np.logaddexp(0.0, -x)


def _sig(x):
    return np.exp(_logsig(x))


def _cdpo(z, ls):  # conservative DPO, Mitchell 2023
    return -(1 - ls) * _logsig(z) - ls * _logsig(-z)


def _ratios(d):
    return d["pc"] - d["rc"], d["pr"] - d["rr"]


def ref_dpo(d, hp):
    b = hp["beta"]
    aw, al = _ratios(d)
    return _cdpo(b * (aw - al), hp.get("label_smoothing", 0.0)), b * aw, b * al


def ref_ln_dpo(d, hp):
    b = hp["beta"]
    aw, al = _ratios(d)
    rw, rl = b * aw / _L(d["nc"]), b * al / _L(d["nr"])
    return -_logsig(rw - rl), rw, rl


def ref_robust(d, hp):
    b, e = hp["beta"], hp["label_smoothing"]
    aw, al = _ratios(d)
    z = b * (aw - al)
    return (-(1 - e) * _logsig(z) + e * _logsig(-z)) / (1 - 2 * e), b * aw, b * al


def ref_hinge(d, hp):
    b = hp["beta"]
    aw, al = _ratios(d)
    return np.maximum(0.0, 1.0 - b * (aw - al)), b * aw, b * al


def ref_ipo(d, hp):
    # TRL averages log-probs over completion tokens for IPO, then
    # logits = (pi_w - pi_l) - (ref_w - ref_l); loss = (logits - 1/(2 beta))^2.
    b = hp["beta"]
    pw, pl = d["pc"] / _L(d["nc"]), d["pr"] / _L(d["nr"])
    qw, ql = d["rc"] / _L(d["nc"]), d["rr"] / _L(d["nr"])
    logits = (pw - pl) - (qw - ql)
    return (logits - 1 / (2 * b)) ** 2, b * (pw - qw), b * (pl - ql)


def ref_rdpo(d, hp):
    # Park et al. 2024: implicit reward beta*log-ratio + alpha*|y|.
    b, a = hp["beta"], hp["alpha"]
    aw, al = _ratios(d)
    return -_logsig(b * aw - b * al + (a * d["nc"] - a * d["nr"])), b * aw, b * al


def ref_rpo(d, hp):
    b = hp["beta"]
    aw, al = _ratios(d)
    nll = -d["pc"] / _L(d["nc"])
    return -_logsig(b * (aw - al)) + hp["alpha"] * nll, b * aw, b * al


def ref_exo_pair(d, hp):
    # EXO eq. 16: KL( (sigma(z), sigma(-z)) || (1-eps, eps) ).
    b, e = hp["beta"], hp["label_smoothing"]
    aw, al = _ratios(d)
    z = b * (aw - al)
    loss = _sig(z) * (_logsig(z) - np.log(1 - e)) + _sig(-z) * (_logsig(-z) - np.log(e))
    return loss, b * aw, b * al


def ref_nca_pair(d, hp):
    b = hp["beta"]
    aw, al = _ratios(d)
    rw, rl = b * aw, b * al
    return -_logsig(rw) - 0.5 * _logsig(-rw) - 0.5 * _logsig(-rl), rw, rl


def ref_bco_pair(d, hp):
    b = hp["beta"]
    aw, al = _ratios(d)
    rw, rl = b * aw, b * al
    delta = hp.get("delta")
    if delta is None:
        delta = np.concatenate([rw, rl]).mean()
    return -_logsig(rw - delta) - _logsig(-(rl - delta)), rw, rl


def ref_sppo_hard(d, hp):
    b = hp["beta"]
    aw, al = _ratios(d)
    return (aw - 0.5 / b) ** 2 + (al + 0.5 / b) ** 2, b * aw, b * al


def ref_aot(d, hp):
    b = hp["beta"]
    aw, al = _ratios(d)
    delta = np.sort(d["pc"] - d["pr"]) - np.sort(d["rc"] - d["rr"])
    return _cdpo(b * delta, hp["label_smoothing"]), b * aw, b * al


def ref_aot_unpaired(d, hp):
    b = hp["beta"]
    aw, al = _ratios(d)
    delta = np.sort(aw) - np.sort(al)
    return _cdpo(b * delta, hp["label_smoothing"]), b * aw, b * al


def ref_apo_zero(d, hp):
    b = hp["beta"]
    aw, al = _ratios(d)
    return (1 - _sig(b * aw)) + _sig(b * al), b * aw, b * al


def ref_apo_down(d, hp):
    b = hp["beta"]
    aw, al = _ratios(d)
    return _sig(b * aw) + (1 - _sig(b * (aw - al))), b * aw, b * al


def ref_discopop(d, hp):
    b, tau = hp["beta"], hp["tau"]
    aw, al = _ratios(d)
    z = b * (aw - al)
    mod = _sig(z / tau)
    # mod * exp(-z) written in log space so it is 0 (not nan) where mod underflows
    loss = (1 - mod) * -_logsig(z) + np.exp(_logsig(z / tau) - z)
    return loss, b * aw, b * al


def _fdiv(d, hp, fprime):
    # Wang et al. 2024: L = -log sigma(beta f'(u_w) - beta f'(u_l)), u = pi/pi_ref,
    # with f' given as a function of a = log u.
    b = hp["beta"]
    aw, al = _ratios(d)
    with np.errstate(over="ignore", invalid="ignore"):
        logits = b * fprime(aw) - b * fprime(al)
        return -_logsig(logits), b * aw, b * al


def ref_fdpo_reverse_kl(d, hp):
    return _fdiv(d, hp, lambda a: a + 1.0)  # f'(u) = log u + 1


def ref_fdpo_forward_kl(d, hp):
    return _fdiv(d, hp, lambda a: -np.exp(-a))  # f'(u) = -1/u


def ref_fdpo_js(d, hp):
    # f'(u) = log(2u / (1 + u)) = log 2 + a - log(1 + e^a)
    return _fdiv(d, hp, lambda a: np.log(2.0) + a - np.logaddexp(0.0, a))


def ref_fdpo_alpha(d, hp):
    al_ = hp["alpha"]
    return _fdiv(d, hp, lambda a: (1 - np.exp(-al_ * a)) / al_)  # (1 - u^-alpha) / alpha


def ref_simpo(d, hp):
    b = hp["beta"]
    rw, rl = b * d["pc"] / _L(d["nc"]), b * d["pr"] / _L(d["nr"])
    return -_logsig(rw - rl - hp["gamma"]), rw, rl


def ref_cpo(d, hp):
    b = hp["beta"]
    nll = -d["pc"] / _L(d["nc"])
    return -_logsig(b * d["pc"] - b * d["pr"]) + hp["nll_weight"] * nll, b * d["pc"], b * d["pr"]


def ref_orpo(d, hp):
    lam = hp["lam"]
    mw, ml = d["pc"] / _L(d["nc"]), d["pr"] / _L(d["nr"])

    def log_odds(m):  # log(p / (1 - p)), p = e^m
        return m - np.log(-np.expm1(m))

    with np.errstate(divide="ignore", invalid="ignore"):  # empty completions: inf odds
        ratio = log_odds(mw) - log_odds(ml)
        return -mw - lam * _logsig(ratio), lam * mw, lam * ml


def ref_alphapo(d, hp):
    # Gupta et al. 2025: r = (1 - p^-alpha) / alpha, p = exp(mean log-prob); TRL CPO's alpha with simpo.
    b, a = hp["beta"], hp["alpha"]
    mw, ml = d["pc"] / _L(d["nc"]), d["pr"] / _L(d["nr"])
    with np.errstate(over="ignore"):  # extreme batches: the reward is -inf, the library saturates
        rw, rl = b * (1 - np.exp(-a * mw)) / a, b * (1 - np.exp(-a * ml)) / a
    return -_logsig(rw - rl - hp["gamma"]), rw, rl


def ref_nll(d, hp):
    mw, ml = d["pc"] / _L(d["nc"]), d["pr"] / _L(d["nr"])
    return -mw, mw, ml


REFERENCES = {
    "dpo": ref_dpo,
    "ln_dpo": ref_ln_dpo,
    "robust": ref_robust,
    "hinge": ref_hinge,
    "ipo": ref_ipo,
    "rdpo": ref_rdpo,
    "rpo": ref_rpo,
    "exo_pair": ref_exo_pair,
    "nca_pair": ref_nca_pair,
    "bco_pair": ref_bco_pair,
    "sppo_hard": ref_sppo_hard,
    "aot": ref_aot,
    "aot_unpaired": ref_aot_unpaired,
    "apo_zero": ref_apo_zero,
    "apo_down": ref_apo_down,
    "discopop": ref_discopop,
    "fdpo_reverse_kl": ref_fdpo_reverse_kl,
    "fdpo_forward_kl": ref_fdpo_forward_kl,
    "fdpo_js": ref_fdpo_js,
    "fdpo_alpha": ref_fdpo_alpha,
    "simpo": ref_simpo,
    "cpo": ref_cpo,
    "orpo": ref_orpo,
    "alphapo": ref_alphapo,
    "nll": ref_nll,
}

# Hyperparameters used in the tests: beta != 1 everywhere (catches a missing or
# doubled beta), smoothing terms non-zero.
TEST_HP = {
    "dpo": {"beta": 0.7, "label_smoothing": 0.15},
    "ln_dpo": {"beta": 2.5},
    "robust": {"beta": 0.6, "label_smoothing": 0.2},
    "hinge": {"beta": 0.4},
    "ipo": {"beta": 0.3},
    "rdpo": {"beta": 0.5, "alpha": 0.03},
    "rpo": {"beta": 0.6, "alpha": 0.4},
    "exo_pair": {"beta": 0.8, "label_smoothing": 0.05},
    "nca_pair": {"beta": 0.9},
    "bco_pair": {"beta": 0.7},
    "sppo_hard": {"beta": 0.6},
    "aot": {"beta": 0.5, "label_smoothing": 0.1},
    "aot_unpaired": {"beta": 0.5, "label_smoothing": 0.1},
    "apo_zero": {"beta": 0.4},
    "apo_down": {"beta": 0.4},
    "discopop": {"beta": 0.6, "tau": 0.05},
    "fdpo_reverse_kl": {"beta": 0.7},
    "fdpo_forward_kl": {"beta": 0.3},
    "fdpo_js": {"beta": 0.8},
    "fdpo_alpha": {"beta": 0.5, "alpha": 0.4},
    "simpo": {"beta": 2.0, "gamma": 0.7},
    "cpo": {"beta": 0.3, "nll_weight": 0.6},
    "orpo": {"lam": 0.25},
    "alphapo": {"beta": 2.0, "alpha": 0.25, "gamma": 0.5},
    "nll": {},
}

# f-divergence siblings (lnpo.losses.divergence; Wang et al. 2024, TRL f_divergence_type): the base's loss with
# every log-ratio a replaced by the score g(a), its rewards of the plain log-ratios.
F_SCORES = {
    "_forward_kl": lambda a, hp: 1.0 - np.exp(-a),  # f'(u) + const for f(u) = -log u
    "_js": lambda a, hp: np.log(2.0) + _logsig(a),  # log(2u / (1 + u))
    "_alpha_div": lambda a, hp: (1.0 - np.exp(-hp["f_alpha"] * a)) / hp["f_alpha"],
}
F_HP = {"_forward_kl": {}, "_js": {}, "_alpha_div": {"f_alpha": 0.35}}


def f_divergence_reference(base_ref, suffix):
    def ref(d, hp):
        aw, al = _ratios(d)
        with np.errstate(over="ignore", invalid="ignore"):
            # a reference log-prob that makes the base see log-ratio g(a) (float64: exact enough)
            scored = {**d, "rc": d["pc"] - F_SCORES[suffix](aw, hp), "rr": d["pr"] - F_SCORES[suffix](al, hp)}
            loss = base_ref(scored, hp)[0]
        return (loss, *base_ref(d, hp)[1:])

    return ref


for _base in ("ln_dpo", "hinge", "ipo", "exo_pair", "robust", "discopop", "rpo"):
    for _suffix in F_SCORES:
        REFERENCES[_base + _suffix] = f_divergence_reference(REFERENCES[_base], _suffix)
        TEST_HP[_base + _suffix] = {**TEST_HP[_base], **F_HP[_suffix]}

# Reference values beyond this are astronomically large (exponential f-DPO
# terms); the library saturates them: it must return something finite and at
# least this large instead of matching.
HUGE = 1e15

# ============================================================================ data helpers


def random_batch(seed: int, scale: float) -> dict[str, np.ndarray]:
    """float64 inputs that are exactly representable in float32."""
    rng = np.random.default_rng(seed)
    nc = rng.integers(1, 60, B).astype(np.float64)
    nr = rng.integers(1, 60, B).astype(np.float64)
    rc = -nc * rng.uniform(0.3, 2.5, B)
    rr = -nr * rng.uniform(0.3, 2.5, B)
    pc = np.minimum(rc + rng.normal(0.0, scale, B), -0.05)
    pr = np.minimum(rr + rng.normal(0.0, scale, B), -0.05)
    d = dict(pc=pc, pr=pr, rc=rc, rr=rr, nc=nc, nr=nr)
    return {k: v.astype(np.float32).astype(np.float64) for k, v in d.items()}


def extreme_batch() -> dict[str, np.ndarray]:
    """Log-ratios of +-1e4 in every combination, and policy margins of +-1e4."""
    big = 1e4
    # (policy, reference) giving log-ratio +1e4, -1e4, 0
    plus, minus, zero = (-1.0, -1.0 - big), (-big, 0.0), (-5.0, -5.0)
    pairs = [(plus, minus), (minus, plus), (plus, plus), (minus, minus),
             (plus, zero), (zero, minus), (minus, zero), (zero, plus)]  # fmt: skip
    pc = np.array([w[0] for w, _ in pairs])
    rc = np.array([w[1] for w, _ in pairs])
    pr = np.array([l_[0] for _, l_ in pairs])
    rr = np.array([l_[1] for _, l_ in pairs])
    nc = np.array([0, 1, 100, 3, 0, 7, 1, 2], np.float64)
    nr = np.array([1, 0, 3, 100, 5, 0, 2, 1], np.float64)
    return dict(pc=pc, pr=pr, rc=rc, rr=rr, nc=nc, nr=nr)


def zero_length_batch(seed: int = 7) -> dict[str, np.ndarray]:
    """Half the completions are empty: log-prob sum 0 and token count 0."""
    d = random_batch(seed, 4.0)
    empty_c = np.array([1, 0, 1, 0, 1, 1, 0, 0], bool)
    empty_r = np.array([0, 1, 1, 0, 1, 0, 1, 0], bool)
    for key, mask in (("c", empty_c), ("r", empty_r)):
        d["p" + key] = np.where(mask, 0.0, d["p" + key])
        d["r" + key] = np.where(mask, 0.0, d["r" + key])
        d["n" + key] = np.where(mask, 0.0, d["n" + key])
    return d


def to_logps(d, dtype=jnp.float32, with_ref=True) -> PairLogps:
    return PairLogps(
        policy_chosen=jnp.asarray(d["pc"], dtype),
        policy_rejected=jnp.asarray(d["pr"], dtype),
        ref_chosen=jnp.asarray(d["rc"], dtype) if with_ref else None,
        ref_rejected=jnp.asarray(d["rr"], dtype) if with_ref else None,
        chosen_tokens=jnp.asarray(d["nc"], jnp.int32),
        rejected_tokens=jnp.asarray(d["nr"], jnp.int32),
    )


def run(name, d, **overrides):
    hp = {**TEST_HP[name], **overrides}
    loss, metrics = losses.get(name)(to_logps(d), **hp)
    return np.asarray(loss, np.float64), {k: np.asarray(v, np.float64) for k, v in metrics.items()}


def reference(name, d, **overrides):
    hp = {**losses.hparams_of(name), **TEST_HP[name], **overrides}  # library defaults
    return REFERENCES[name](d, hp)


_GRAD_FNS = {}


def _jitted_grad(name):
    """jit(grad) with the hyperparameters as traced arguments: one compilation per objective."""
    if name not in _GRAD_FNS:
        fn = losses.get(name)

        def total(pc, pr, lp, hp):
            return fn(lp._replace(policy_chosen=pc, policy_rejected=pr), **hp)[0].sum()

        _GRAD_FNS[name] = jax.jit(jax.grad(total, argnums=(0, 1)))
    return _GRAD_FNS[name]


def grad_policy(name, d, eager=False, **overrides):
    """d sum(loss) / d (policy_chosen, policy_rejected) from the library."""
    hp = losses.validate(name, {**TEST_HP[name], **overrides})
    base = to_logps(d)
    if eager:  # plain jax.grad with concrete hyperparameters
        fn = losses.get(name)

        def total(pc, pr):
            return fn(base._replace(policy_chosen=pc, policy_rejected=pr), **hp)[0].sum()

        g = jax.grad(total, argnums=(0, 1))(base.policy_chosen, base.policy_rejected)
    else:
        g = _jitted_grad(name)(base.policy_chosen, base.policy_rejected, base, hp)
    return [np.asarray(x, np.float64) for x in g]


def fd_grad_policy(name, d, **overrides):
    """Central finite differences of the float64 reference's summed loss."""
    hp = {**losses.hparams_of(name), **TEST_HP[name], **overrides}
    if name == "bco_pair" and hp.get("delta") is None:
        # the library's batch-mean delta is under stop_gradient: hold it fixed
        aw, al = _ratios(d)
        hp["delta"] = hp["beta"] * np.concatenate([aw, al]).mean()
    out = []
    for key in ("pc", "pr"):
        g = np.zeros(B)
        for i in range(B):
            h = 1e-6 * max(1.0, abs(d[key][i]))
            up, dn = dict(d), dict(d)
            up[key] = d[key].copy()
            dn[key] = d[key].copy()
            up[key][i] += h
            dn[key][i] -= h
            lu, ld = REFERENCES[name](up, hp)[0], REFERENCES[name](dn, hp)[0]
            # pairs are independent except in aot (sorted batch): difference only
            # the entry that moved, so huge losses elsewhere add no roundoff
            g[i] = (lu.sum() - ld.sum() if name.startswith("aot") else lu[i] - ld[i]) / (2 * h)
        out.append(g)
    return out


def assert_close_or_saturated(got, want, rtol=2e-5, atol=2e-6, what=""):
    """Compare where the reference is moderate; elsewhere demand finite, of its sign and at least HUGE in size
    (robust's loss is unbounded below: saturated f-divergence margins drive it to -HUGE)."""
    got, want = np.asarray(got), np.asarray(want)
    assert np.all(np.isfinite(got)), f"{what}: non-finite {got}"
    moderate = np.isfinite(want) & (np.abs(want) < HUGE)
    np.testing.assert_allclose(got[moderate], want[moderate], rtol=rtol, atol=atol, err_msg=what)
    huge = ~moderate & ~np.isnan(want)  # nan: inf - inf in the reference, checked elsewhere
    ok = (np.abs(got[huge]) >= HUGE) & (np.sign(got[huge]) == np.sign(want[huge]))
    assert np.all(ok), f"{what}: saturated values {got[huge]} not of the sign of {want[huge]} and size >= {HUGE}"


ALL = [n for n in losses.names() if not losses.needs(n)]  # the rest: tests/losses/test_statistics_objectives.py
REF_BASED = [n for n in ALL if losses.requires_reference(n)]
REF_FREE = [n for n in ALL if not losses.requires_reference(n)]

# ============================================================================ coverage


@pytest.mark.parametrize("name", ALL)
def test_every_objective_has_a_reference(name):
    assert name in REFERENCES, f"objective {name!r} has no NumPy reference in this file"
    assert name in TEST_HP, f"objective {name!r} has no test hyperparameters"
    assert set(TEST_HP[name]) <= set(losses.hparams_of(name))
    assert losses.get(name).__doc__ and "(" in losses.get(name).__doc__  # formula + citation


def test_names_sorted_and_known_set():
    assert ALL == sorted(ALL)
    assert set(REFERENCES) == set(ALL)
    assert set(REF_FREE) == {"simpo", "cpo", "orpo", "nll", "alphapo"}


# ============================================================================ values


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seed,scale", [(0, 4.0), (1, 4.0), (2, 40.0)])
def test_matches_reference(name, seed, scale):
    d = random_batch(seed, scale)
    loss, metrics = run(name, d)
    want_loss, want_rc, want_rr = reference(name, d)
    assert_close_or_saturated(loss, want_loss, what=f"{name} loss")
    np.testing.assert_allclose(metrics["rewards/chosen"], want_rc, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(metrics["rewards/rejected"], want_rr, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(metrics["rewards/margins"], want_rc - want_rr, rtol=1e-4, atol=1e-5)
    decided = np.abs(want_rc - want_rr) > 1e-4
    np.testing.assert_array_equal(metrics["rewards/accuracies"][decided], (want_rc > want_rr)[decided])
    np.testing.assert_allclose(metrics["logps/chosen"], d["pc"], rtol=1e-6)
    np.testing.assert_allclose(metrics["logps/rejected"], d["pr"], rtol=1e-6)
    np.testing.assert_allclose(metrics["logps/chosen_per_token"], d["pc"] / _L(d["nc"]), rtol=1e-6)
    np.testing.assert_allclose(metrics["logps/rejected_per_token"], d["pr"] / _L(d["nr"]), rtol=1e-6)


COUPLED = ("aot", "aot_unpaired", "bco_pair")  # the loss of one pair depends on the others


@pytest.mark.parametrize("name", ALL)
def test_padding_pairs_change_no_real_pair(name):
    """PairLogps.valid: 8 real pairs with 3 padding pairs of extreme values interleaved give
    every real pair the loss, metrics and policy gradient of the 8 real pairs alone (the
    float64 reference of them); padding pairs get loss 0 and gradient 0."""
    d = random_batch(3, 4.0)
    pad = dict(pc=[-1e4, -0.5, -300.0], pr=[-0.5, -1e4, -2.0], rc=[-3.0, -1e4, -0.1], rr=[-1e4, -3.0, -900.0],
               nc=[1.0, 1.0, 40.0], nr=[1.0, 1.0, 3.0])
    where = np.array([1, 5, 9])  # positions of the padding pairs in the padded batch of 11
    real = np.setdiff1d(np.arange(B + 3), where)
    padded = {}
    for k in d:
        v = np.empty(B + 3)
        v[real], v[where] = d[k], pad[k]
        padded[k] = v
    valid = np.zeros(B + 3, np.float32)
    valid[real] = 1.0
    fn = losses.get(name)
    hp = losses.validate(name, TEST_HP[name])

    def total(pc, pr, lp):
        return jnp.sum(fn(lp._replace(policy_chosen=pc, policy_rejected=pr), **hp)[0] * lp.valid)

    lp = to_logps(padded)._replace(valid=jnp.asarray(valid))
    loss, metrics = fn(lp, **hp)
    loss = np.asarray(loss, np.float64)
    want_loss, want_rc, _ = reference(name, d)
    assert_close_or_saturated(loss[real], want_loss, what=f"{name} loss of the real pairs")
    np.testing.assert_allclose(np.asarray(metrics["rewards/chosen"])[real], want_rc, rtol=2e-5, atol=2e-6)
    g = [np.asarray(x, np.float64) for x in jax.grad(total, argnums=(0, 1))(lp.policy_chosen, lp.policy_rejected, lp)]
    for got, want in zip(g, grad_policy(name, d)):
        np.testing.assert_allclose(got[real], want, rtol=1e-4, atol=1e-6)
        assert np.isfinite(got).all()
    assert (loss[where] == 0).all()
    for got in g:
        assert (got[where] == 0).all()
    # without the mask the padding pairs move the coupled objectives' real losses
    unmasked = np.asarray(fn(to_logps(padded), **hp)[0], np.float64)
    if name in COUPLED:
        assert not np.allclose(unmasked[real], want_loss, rtol=1e-3)


@pytest.mark.parametrize("name", ALL)
def test_output_types(name):
    loss, metrics = losses.get(name)(to_logps(random_batch(0, 4.0)), **TEST_HP[name])
    assert loss.dtype == jnp.float32 and loss.shape == (B,)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "logps/chosen_per_token",
                "logps/rejected_per_token"):  # fmt: skip
        assert key in metrics, key
    for k, v in metrics.items():
        assert v.dtype == jnp.float32 and v.shape == (B,), k


@pytest.mark.parametrize("name", ["rpo", "cpo", "orpo"])
def test_nll_metric(name):
    d = random_batch(3, 4.0)
    _, metrics = run(name, d)
    np.testing.assert_allclose(metrics["nll_loss"], -d["pc"] / d["nc"], rtol=1e-5)


def test_bco_pair_explicit_delta():
    d = random_batch(4, 4.0)
    loss, _ = run("bco_pair", d, delta=0.3)
    np.testing.assert_allclose(loss, reference("bco_pair", d, delta=0.3)[0], rtol=2e-5)
    # the default really is the batch mean (differs from an explicit 0)
    assert not np.allclose(run("bco_pair", d)[0], run("bco_pair", d, delta=0.0)[0])


@pytest.mark.parametrize("name", ALL)
def test_extremes_finite_and_correct(name):
    d = extreme_batch()
    loss, metrics = run(name, d)
    want, want_rc, want_rr = reference(name, d)
    assert_close_or_saturated(loss, want, rtol=1e-5, atol=1e-5, what=f"{name} extreme loss")
    for k, v in metrics.items():
        assert np.all(np.isfinite(v)), k
    for g in grad_policy(name, d):
        assert np.all(np.isfinite(g)), f"{name}: non-finite gradient {g}"


def test_extreme_limits():
    d = extreme_batch()  # pair 0: chosen +1e4, rejected -1e4; pair 1: the reverse
    dpo, _ = run("dpo", d, label_smoothing=0.0)
    assert dpo[0] == 0.0 and dpo[1] == pytest.approx(0.7 * 2e4, rel=1e-6)
    hinge, _ = run("hinge", d)
    assert hinge[0] == 0.0 and hinge[1] == pytest.approx(1 + 0.4 * 2e4, rel=1e-6)
    apo, _ = run("apo_zero", d)
    assert apo[0] == pytest.approx(0.0, abs=1e-6) and apo[1] == pytest.approx(2.0, abs=1e-6)
    fkl, _ = run("fdpo_forward_kl", d)
    assert fkl[0] == pytest.approx(0.0, abs=1e-6) and fkl[1] >= HUGE and np.isfinite(fkl[1])
    # both log-ratios -1e4: the two exponential terms are equal (inf - inf in the
    # float64 reference); nudged apart, the loss keeps the right direction.
    for name in ("fdpo_forward_kl", "fdpo_alpha"):
        assert run(name, d)[0][3] == pytest.approx(math.log(2.0), rel=1e-6)
        better = {**d, "pc": d["pc"] + np.eye(B)[3] * 50.0}  # a_w = -9950 > a_l = -1e4
        worse = {**d, "pc": d["pc"] - np.eye(B)[3] * 50.0}
        assert run(name, better)[0][3] == pytest.approx(0.0, abs=1e-6)
        assert HUGE <= run(name, worse)[0][3] < np.inf
        for dd in (better, worse):
            assert all(np.all(np.isfinite(g)) for g in grad_policy(name, dd))
    disco, _ = run("discopop", d)
    assert disco[0] == pytest.approx(0.0, abs=1e-6) and disco[1] == pytest.approx(0.6 * 2e4, rel=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_zero_length_completions_finite(name):
    d = zero_length_batch()
    loss, metrics = run(name, d)
    want = reference(name, d)[0]
    assert np.all(np.isfinite(loss))
    for k, v in metrics.items():
        assert np.all(np.isfinite(v)), k
    for g in grad_policy(name, d):
        assert np.all(np.isfinite(g))
    if name != "orpo":
        assert_close_or_saturated(loss, want, what=name)
    else:
        # ORPO's odds of an empty completion (mean log-prob 0) are infinite; the
        # library clamps the mean to -1e-6 (odds e^13.8), close to the limit.
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(want)
        np.testing.assert_allclose(loss[ok], want[ok], rtol=2e-5, atol=1e-4)


def test_zero_length_means_length_one():
    d = zero_length_batch()
    d1 = {**d, "nc": np.maximum(d["nc"], 1), "nr": np.maximum(d["nr"], 1)}
    for name in ("ln_dpo", "ipo", "simpo", "orpo", "nll"):
        np.testing.assert_array_equal(run(name, d)[0], run(name, d1)[0])


# ============================================================================ gradients


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seed,scale", [(5, 4.0), (6, 40.0)])
def test_gradient_matches_finite_differences(name, seed, scale):
    d = random_batch(seed, scale)
    got = grad_policy(name, d)
    want = fd_grad_policy(name, d)
    # central differences lose ~eps * |loss| / h to roundoff: compare where the
    # loss is moderate (huge f-DPO losses are covered by the value tests)
    ok = np.abs(reference(name, d)[0]) < 1e6
    if name.startswith("aot"):
        ok = np.ones(B, bool)  # coupled batch: per-position masking does not apply
    for g, w, what in zip(got, want, ("policy_chosen", "policy_rejected")):
        assert np.all(np.isfinite(g))
        scale_ = max(1.0, np.abs(w[ok]).max(initial=0.0))
        np.testing.assert_allclose(g[ok], w[ok], rtol=1e-4, atol=1e-5 * scale_, err_msg=f"{name} {what}")


@pytest.mark.parametrize("name", ["dpo", "ln_dpo"])
def test_policy_equals_reference(name):
    """log 2 and d loss / d policy_chosen = -beta/2 (dpo), -beta/(2|y_w|) (ln_dpo):
    catches a beta applied twice or a missing length normalization."""
    d = random_batch(8, 4.0)
    d = {**d, "pc": d["rc"], "pr": d["rr"]}
    hp = {"beta": TEST_HP[name]["beta"]} | ({"label_smoothing": 0.0} if name == "dpo" else {})
    beta = hp["beta"]
    loss, _ = run(name, d, **hp)
    np.testing.assert_allclose(loss, math.log(2.0), rtol=1e-6)
    gc, gr = grad_policy(name, d, eager=True, **hp)
    nc, nr = (1.0, 1.0) if name == "dpo" else (d["nc"], d["nr"])
    np.testing.assert_allclose(gc, -beta / (2 * nc), rtol=1e-6)
    np.testing.assert_allclose(gr, beta / (2 * nr), rtol=1e-6)


# ============================================================================ transformations


@pytest.mark.parametrize("name", ALL)
def test_jit_vmap_bf16(name):
    fn, hp = losses.get(name), TEST_HP[name]
    batches = [random_batch(s, 4.0) for s in (10, 11, 12)]
    eager = [np.asarray(fn(to_logps(d), **hp)[0]) for d in batches]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[to_logps(d) for d in batches])
    lp16 = to_logps(batches[0], jnp.bfloat16)

    # The caller's jit around vmap and a bf16 call (one compilation for all).
    @jax.jit
    def call(stacked, lp16):
        return jax.vmap(lambda lp: fn(lp, **hp))(stacked), fn(lp16, **hp)

    (vloss, vmetrics), (loss16, metrics16) = call(stacked, lp16)
    assert vloss.shape == (3, B) and vmetrics["rewards/chosen"].shape == (3, B)
    np.testing.assert_allclose(np.asarray(vloss), np.stack(eager), rtol=1e-5, atol=1e-6)

    # bf16 in, float32 out, equal to the float32 computation on the rounded values
    assert loss16.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in metrics16.values())
    rounded = {k: np.asarray(jnp.asarray(v, jnp.bfloat16), np.float64) for k, v in batches[0].items()}
    np.testing.assert_allclose(np.asarray(loss16), np.asarray(fn(to_logps(rounded), **hp)[0]), rtol=1e-6, atol=1e-7)
    assert not np.array_equal(np.asarray(loss16), eager[0])  # the rounding did happen


def test_bf16_eager():
    fn = losses.get("dpo")
    loss, metrics = fn(to_logps(random_batch(10, 4.0), jnp.bfloat16), beta=0.1)
    assert loss.dtype == jnp.float32 and metrics["logps/chosen"].dtype == jnp.float32


def test_grad_under_jit_and_vmap():
    fn = losses.get("ln_dpo")
    lp = to_logps(random_batch(13, 4.0))

    @jax.jit
    def g(lp):
        return jax.grad(lambda pc: fn(lp._replace(policy_chosen=pc), beta=2.5)[0].sum())(lp.policy_chosen)

    got = np.asarray(g(lp))
    want = grad_policy("ln_dpo", random_batch(13, 4.0))[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)

    # grad inside vmap over a stack of batches == grad of each batch
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[to_logps(random_batch(s, 4.0)) for s in (13, 14)])
    vg = jax.vmap(g)(stacked)
    np.testing.assert_allclose(np.asarray(vg[0]), got, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(vg[1]), grad_policy("ln_dpo", random_batch(14, 4.0))[0], rtol=1e-6)


def test_hparams_traced_no_recompile_and_traced_hparam_ok():
    fn = losses.get("dpo")
    lp = to_logps(random_batch(14, 4.0))
    fn(lp, beta=0.1)
    size = fn.jitted._cache_size()
    for beta in (0.2, 0.3, 1, np.float64(0.5), jnp.float32(0.25)):
        fn(lp, beta=beta, label_smoothing=0.1)
    assert fn.jitted._cache_size() == size

    # beta traced by the caller's own jit: range unchecked, no crash, right value
    swept = jax.jit(jax.vmap(lambda b: fn(lp, beta=b)[0]))(jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(np.asarray(swept[1]), np.asarray(fn(lp, beta=0.2)[0]), rtol=1e-6)


# ============================================================================ properties


def test_simpo_ignores_reference():
    d = random_batch(15, 4.0)
    fn = losses.get("simpo")
    with_ref = fn(to_logps(d), beta=2.0, gamma=0.5)
    without = fn(to_logps(d, with_ref=False), beta=2.0, gamma=0.5)
    other = fn(to_logps({**d, "rc": d["rc"] * 3, "rr": d["rr"] - 7}), beta=2.0, gamma=0.5)
    for a, b_ in ((with_ref, without), (with_ref, other)):
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b_[0]))
        for k in a[1]:
            np.testing.assert_array_equal(np.asarray(a[1][k]), np.asarray(b_[1][k]))


@pytest.mark.parametrize("name", REF_FREE)
def test_reference_free_accept_none(name):
    loss, _ = losses.get(name)(to_logps(random_batch(16, 4.0), with_ref=False), **TEST_HP[name])
    assert np.all(np.isfinite(np.asarray(loss)))


@pytest.mark.parametrize("name", REF_BASED)
def test_reference_based_require_reference(name):
    lp = to_logps(random_batch(17, 4.0), with_ref=False)
    free = "alphapo, cpo, nll, orpo, simpo"
    with pytest.raises(ValueError, match=rf"{name}: needs reference.*reference-free objectives: {free}"):
        losses.get(name)(lp, **TEST_HP[name])
    with pytest.raises(ValueError, match="needs reference"):
        losses.get(name)(to_logps(random_batch(17, 4.0))._replace(ref_rejected=None), **TEST_HP[name])


def test_ln_dpo_is_dpo_with_beta_over_length():
    d = random_batch(18, 4.0)
    for length in (1, 7, 64):
        dl = {**d, "nc": np.full(B, float(length)), "nr": np.full(B, float(length))}
        ln, _ = run("ln_dpo", dl, beta=2.5)
        dpo, _ = run("dpo", dl, beta=2.5 / length, label_smoothing=0.0)
        np.testing.assert_allclose(ln, dpo, rtol=1e-6)
    # and differs when the lengths differ
    assert not np.allclose(run("ln_dpo", d, beta=2.5)[0], run("dpo", d, beta=2.5 / 30, label_smoothing=0.0)[0])


def test_label_smoothing():
    d = random_batch(19, 4.0)
    swapped = {**d, "pc": d["pr"], "pr": d["pc"], "rc": d["rr"], "rr": d["rc"], "nc": d["nr"], "nr": d["nc"]}
    plain = run("dpo", d, beta=0.7, label_smoothing=0.0)[0]
    np.testing.assert_array_equal(run("dpo", d, beta=0.7, label_smoothing=0)[0], plain)
    np.testing.assert_allclose(plain, -_logsig(0.7 * (np.subtract(*_ratios(d)))), rtol=2e-5)
    np.testing.assert_allclose(run("fdpo_reverse_kl", d, beta=0.7)[0], plain, rtol=1e-6)
    np.testing.assert_allclose(run("robust", d, beta=0.7, label_smoothing=0.0)[0], plain, rtol=1e-6)
    for name in ("aot", "aot_unpaired"):
        np.testing.assert_allclose(
            run(name, d, beta=0.7, label_smoothing=0.0)[0],
            reference(name, d, beta=0.7, label_smoothing=0.0)[0],
            rtol=2e-5,
        )
    flipped = run("dpo", swapped, beta=0.7, label_smoothing=0.0)[0]
    for ls in (0.1, 0.3, 0.49):
        mixed = run("dpo", d, beta=0.7, label_smoothing=ls)[0]
        np.testing.assert_allclose(mixed, (1 - ls) * plain + ls * flipped, rtol=1e-5)
    assert losses.hparams_of("dpo")["label_smoothing"] == 0.0
    lp = to_logps(d)
    for name in ("dpo", "robust", "aot", "aot_unpaired"):
        for bad in (-0.1, 0.5, 0.7, float("nan")):
            with pytest.raises(ValueError, match=rf"{name}: label_smoothing must be in \[0, 0.5\)"):
                losses.get(name)(lp, beta=0.1, label_smoothing=bad)
    for bad in (0.0, 0.5):
        with pytest.raises(ValueError, match=r"exo_pair: label_smoothing must be in \(0, 0.5\)"):
            losses.get("exo_pair")(lp, beta=0.1, label_smoothing=bad)


def test_f_divergence_limits():
    d = random_batch(20, 1.0)
    dpo = run("fdpo_reverse_kl", d, beta=0.5)[0]
    np.testing.assert_allclose(run("fdpo_alpha", d, beta=0.5, alpha=1e-4)[0], dpo, rtol=1e-3)
    fkl = run("fdpo_forward_kl", d, beta=0.5)[0]
    np.testing.assert_allclose(run("fdpo_alpha", d, beta=0.5, alpha=1 - 1e-5)[0], fkl, rtol=1e-3)


@pytest.mark.parametrize("base", ["ipo", "hinge", "ln_dpo"])
def test_f_divergence_sibling_limits(base):
    """f_alpha -> 0 is the base (reverse KL), f_alpha -> 1 the forward-KL sibling; small f_alpha stays accurate
    (the scores come from expm1, not 1 - e^x)."""
    d = random_batch(22, 1.0)
    plain = run(base, d)[0]
    np.testing.assert_allclose(run(base + "_alpha_div", d, f_alpha=1e-6)[0], plain, rtol=1e-4, atol=1e-6)
    fkl = run(base + "_forward_kl", d)[0]
    np.testing.assert_allclose(run(base + "_alpha_div", d, f_alpha=1 - 1e-6)[0], fkl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(run(base + "_alpha_div", d, f_alpha=1e-3)[0],
                               reference(base + "_alpha_div", d, f_alpha=1e-3)[0], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["hinge_forward_kl", "ipo_alpha_div"])
def test_f_divergence_saturated_scores_keep_the_direction(name):
    """Both log-ratios -1e4 (both scores saturate, inf - inf in float64): nudged apart, the loss follows the
    sign of the difference, finite, with finite gradients; equal ones give hinge's loss at margin 0."""
    d = extreme_batch()  # pair 3: both log-ratios -1e4
    if name == "hinge_forward_kl":
        assert run(name, d)[0][3] == 1.0
    better = {**d, "pc": d["pc"] + np.eye(B)[3] * 50.0}  # a_w = -9950 > a_l = -1e4
    worse = {**d, "pc": d["pc"] - np.eye(B)[3] * 50.0}
    got_better, got_worse = run(name, better)[0][3], run(name, worse)[0][3]
    assert np.isfinite(got_better) and HUGE <= got_worse < np.inf
    if name == "hinge_forward_kl":
        assert got_better == 0.0
    for dd in (better, worse):
        assert all(np.all(np.isfinite(g)) for g in grad_policy(name, dd))


def test_aot_is_permutation_invariant():
    d = random_batch(21, 4.0)
    perm = np.random.default_rng(0).permutation(B)
    dp = {k: v[perm] for k, v in d.items()}
    for name in ("aot", "aot_unpaired"):
        np.testing.assert_allclose(run(name, d)[0], run(name, dp)[0], rtol=1e-6)


def test_rdpo_sign_and_reduction():
    d = random_batch(22, 4.0)
    np.testing.assert_allclose(run("rdpo", d, alpha=0.0)[0], run("dpo", d, beta=0.5, label_smoothing=0.0)[0], rtol=1e-6)
    # a longer chosen response lowers the loss (length already "explains" the preference)
    longer = {**d, "nc": d["nr"] + 20}
    assert np.all(run("rdpo", longer, alpha=0.05)[0] < run("rdpo", longer, alpha=0.0)[0])


def test_discopop_and_orpo_extra_checks():
    d = random_batch(23, 4.0)
    _, m = run("orpo", d)
    np.testing.assert_allclose(m["log_odds_ratio"], _logsig(m["log_odds_chosen"]), rtol=1e-5)
    # discopop: tau > 1 saturates rather than overflows at large negative margins
    loss, _ = losses.get("discopop")(to_logps(extreme_batch()), beta=1.0, tau=3.0)
    assert np.all(np.isfinite(np.asarray(loss)))


# ============================================================================ API and errors


def test_unknown_objective_lists_choices():
    with pytest.raises(ValueError, match=r"unknown objective 'dpoo'; valid: alphapo, aot, aot_unpaired, .*dpo, .*simpo"
                       ):
        losses.get("dpoo")
    for fn in (losses.requires_reference, losses.hparams_of):
        with pytest.raises(ValueError, match="unknown objective"):
            fn("nope")
    with pytest.raises(ValueError, match="unknown objective"):
        losses.validate("nope", {})


def test_hparam_errors():
    lp = to_logps(random_batch(24, 4.0))
    dpo, ln = losses.get("dpo"), losses.get("ln_dpo")
    with pytest.raises(ValueError, match=r"^dpo: missing hyperparameter 'beta'; takes beta, label_smoothing$"):
        dpo(lp)
    with pytest.raises(ValueError, match=r"^dpo: unknown hyperparameter 'gamma'; takes beta, label_smoothing$"):
        dpo(lp, beta=0.1, gamma=1.0)
    with pytest.raises(ValueError, match=r"^ln_dpo: beta must be > 0, got -1$"):
        ln(lp, beta=-1)
    for bad in (0, 0.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="beta must be > 0"):
            ln(lp, beta=bad)
    for bad in ("0.1", True, [0.1, 0.2], np.ones(2)):
        with pytest.raises(ValueError, match="beta must be a"):
            ln(lp, beta=bad)
    with pytest.raises(ValueError, match=r"nll: unknown hyperparameter 'beta'; takes no hyperparameters"):
        losses.get("nll")(lp, beta=0.1)
    with pytest.raises(ValueError, match=r"simpo: missing hyperparameter 'gamma'"):
        losses.get("simpo")(lp, beta=2.0)
    with pytest.raises(ValueError, match=r"simpo: gamma must be >= 0, got -0.5"):
        losses.get("simpo")(lp, beta=2.0, gamma=-0.5)
    with pytest.raises(ValueError, match=r"fdpo_alpha: alpha must be in \(0, 1\), got 1"):
        losses.get("fdpo_alpha")(lp, beta=0.1, alpha=1.0)
    with pytest.raises(ValueError, match=r"discopop: tau must be > 0, got 0"):
        losses.get("discopop")(lp, beta=0.1, tau=0.0)
    with pytest.raises(ValueError, match=r"orpo: lam must be >= 0"):
        losses.get("orpo")(lp, lam=-1.0)
    with pytest.raises(ValueError, match=r"cpo: nll_weight must be >= 0"):
        losses.get("cpo")(lp, beta=0.1, nll_weight=-1.0)
    with pytest.raises(ValueError, match=r"bco_pair: delta must be finite or None, got inf"):
        losses.get("bco_pair")(lp, beta=0.1, delta=float("inf"))


def test_input_errors():
    lp = to_logps(random_batch(25, 4.0))
    with pytest.raises(ValueError, match="chosen_tokens is None"):
        losses.get("dpo")(lp._replace(chosen_tokens=None), beta=0.1)
    with pytest.raises(ValueError, match="same shape"):
        losses.get("dpo")(lp._replace(policy_rejected=lp.policy_rejected[:3]), beta=0.1)
    with pytest.raises(ValueError, match="expected lnpo.losses.PairLogps"):
        losses.get("dpo")(tuple(lp), beta=0.1)


def test_hparams_of_validate_requires_reference():
    assert losses.hparams_of("dpo") == {"beta": losses.REQUIRED, "label_smoothing": 0.0}
    assert losses.hparams_of("discopop") == {"beta": losses.REQUIRED, "tau": 0.05}
    assert losses.hparams_of("exo_pair")["label_smoothing"] == 1e-3
    assert losses.hparams_of("cpo")["nll_weight"] == 1.0
    assert losses.hparams_of("bco_pair")["delta"] is None
    assert losses.hparams_of("nll") == {}
    assert repr(losses.REQUIRED) == "REQUIRED"
    assert losses.validate("dpo", {"beta": 1}) == {"beta": 1.0, "label_smoothing": 0.0}
    assert isinstance(losses.validate("dpo", {"beta": 1})["beta"], float)
    with pytest.raises(ValueError, match=r"^dpo: missing hyperparameter 'beta'"):
        losses.validate("dpo", {})
    assert losses.hparam_ranges("dpo") == {"beta": "> 0", "label_smoothing": "in [0, 0.5)"}
    for name in ALL:
        assert losses.get(name).requires_reference == losses.requires_reference(name)
        for key, default in losses.hparams_of(name).items():
            if default is losses.REQUIRED:
                assert key in TEST_HP[name], f"{name}: required {key} missing from TEST_HP"
        assert losses.get(name) is losses.get(name)  # built once
    assert losses.requires_reference("dpo") and not losses.requires_reference("simpo")
    assert losses.ln_dpo is losses.get("ln_dpo") and "simpo" in dir(losses)
    with pytest.raises(AttributeError):
        _ = losses.dpoo  # an unknown objective's attribute raises


def test_combine():
    d = random_batch(26, 4.0)
    lp = to_logps(d)
    both = losses.combine({"dpo": (1.0, {"beta": 0.1}), "nll": (0.2, {})})
    loss, m = both(lp)
    dpo_loss, dpo_m = losses.get("dpo")(lp, beta=0.1)
    nll_loss, _ = losses.get("nll")(lp)
    np.testing.assert_allclose(np.asarray(loss), np.asarray(dpo_loss + 0.2 * nll_loss), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(loss), -_logsig(0.1 * np.subtract(*_ratios(d))) - 0.2 * d["pc"] / d["nc"],
                               rtol=2e-5)
    assert loss.dtype == jnp.float32 and loss.shape == (B,)
    for k, v in dpo_m.items():
        np.testing.assert_array_equal(np.asarray(m[k]), np.asarray(v))
    np.testing.assert_array_equal(np.asarray(m["loss/dpo"]), np.asarray(dpo_loss))
    np.testing.assert_array_equal(np.asarray(m["loss/nll"]), np.asarray(nll_loss))
    assert "nll/rewards/chosen" in m and "nll/logps/chosen" not in m
    assert both.requires_reference
    with pytest.raises(ValueError, match="needs reference"):
        both(to_logps(d, with_ref=False))
    g = jax.grad(lambda pc: both(lp._replace(policy_chosen=pc))[0].sum())(lp.policy_chosen)
    np.testing.assert_allclose(np.asarray(g), -0.1 * _sig(-0.1 * np.subtract(*_ratios(d))) - 0.2 / d["nc"], rtol=1e-5)

    free = losses.combine({"simpo": (1.0, {"beta": 2.0, "gamma": 0.5}), "nll": (0.5, {})})
    assert not free.requires_reference
    assert np.all(np.isfinite(np.asarray(free(to_logps(d, with_ref=False))[0])))

    with pytest.raises(ValueError, match="unknown objective 'dpoo'; valid:"):
        losses.combine({"dpoo": (1.0, {})})
    with pytest.raises(ValueError, match=r"dpo: missing hyperparameter 'beta'"):
        losses.combine({"dpo": (1.0, {})})
    with pytest.raises(ValueError, match=r"dpo: beta must be > 0"):
        losses.combine({"dpo": (1.0, {"beta": -1.0})})
    with pytest.raises(ValueError, match="weight of 'nll' must be finite and >= 0"):
        losses.combine({"nll": (-1.0, {})})
    with pytest.raises(ValueError, match=r"must map to \(weight, hparams\)"):
        losses.combine({"nll": 1.0})
    with pytest.raises(ValueError, match="non-empty"):
        losses.combine({})
    with pytest.raises(ValueError, match="bound in combine"):
        both(lp, beta=0.2)


def test_import_is_light():
    code = textwrap.dedent(
        """
        import sys
        import lnpo.losses
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "datasets", "torch"))
        assert not heavy, heavy
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
