"""Objectives that read statistics beyond summed log-probs (``needs``): LD-DPO, SamPO, WPO siblings, KTO.

Each against a float64 NumPy transcription of its paper's formula, with gradients by central finite
differences, padding pairs, validation and the errors of a missing statistic. How the step computes the
statistics themselves: tests/train/test_step_statistics.py; TRL's own code: test_trl_parity.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_objectives import (
    _L,
    F_HP,
    F_SCORES,
    REFERENCES,
    TEST_HP,
    _logsig,
    _sig,
    assert_close_or_saturated,
    random_batch,
)

from lnpo import losses
from lnpo.losses import PairLogps, SequenceStats

B = 8
STATS = ("shared", "sampled", "aligned")


def stats_batch(seed: int, scale: float = 4.0) -> dict:
    """random_batch plus per-sequence statistics (float64, exactly float32) and labels."""
    d = random_batch(seed, scale)
    rng = np.random.default_rng(seed + 100)
    f32 = lambda v: v.astype(np.float32).astype(np.float64)  # noqa: E731
    for prefix in ("s", "m"):  # shared prefix sums, sampled sums: a part of the whole sum
        for k in ("pc", "pr", "rc", "rr"):
            d[prefix + k] = f32(d[k] * rng.uniform(0.2, 0.9, B))
    d["apc"], d["apr"] = f32(-rng.uniform(0.0, 3.0, B) * d["nc"]), f32(-rng.uniform(0.0, 3.0, B) * d["nr"])
    d["label"] = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
    return d


def to_logps(d, valid=None) -> PairLogps:
    j = lambda k: jnp.asarray(d[k], jnp.float32)  # noqa: E731
    return PairLogps(j("pc"), j("pr"), j("rc"), j("rr"), jnp.asarray(d["nc"], jnp.int32),
                     jnp.asarray(d["nr"], jnp.int32), valid=valid,
                     shared=SequenceStats(j("spc"), j("spr"), j("src"), j("srr")),
                     sampled=SequenceStats(j("mpc"), j("mpr"), j("mrc"), j("mrr")),
                     aligned=SequenceStats(j("apc"), j("apr")), label=jnp.asarray(d["label"]))


# ============================================================================ NumPy references


def ref_ld_dpo(d, hp, score=lambda a, hp: a):
    # Liu et al. 2024: log pi_ld = shared + alpha * (total - shared), policy and reference alike; ``score``: an
    # f-divergence's g(a) of the LD log-ratios (TRL applies f_divergence_type after ld_alpha), rewards of a.
    b, a = hp["beta"], hp["alpha"]
    ld = lambda tot, sh: sh + a * (tot - sh)  # noqa: E731
    aw = ld(d["pc"], d["spc"]) - ld(d["rc"], d["src"])
    al = ld(d["pr"], d["spr"]) - ld(d["rr"], d["srr"])
    with np.errstate(over="ignore", invalid="ignore"):
        return -_logsig(b * (score(aw, hp) - score(al, hp))), b * aw, b * al


def ref_sampo(d, hp):
    b = hp["beta"]
    aw, al = d["mpc"] - d["mrc"], d["mpr"] - d["mrr"]
    return -_logsig(b * (aw - al)), b * aw, b * al


def ref_kto(d, hp, valid=None):
    # Ethayarajh et al. 2024 eq. 7 with TRL's batch KL estimate: mean over the KL completions, clamped at 0.
    b = hp["beta"]
    a = d["pc"] - d["rc"]
    kl_terms = d["pr"] - d["rr"]
    z = max(0.0, kl_terms[valid].mean() if valid is not None else kl_terms.mean())
    loss = np.where(d["label"], hp["desirable_weight"] * (1 - _sig(b * (a - z))),
                    hp["undesirable_weight"] * (1 - _sig(b * (z - a))))
    return loss, b * a, np.full(B, b * z)


def ref_apo_zero_unpaired(d, hp):
    b = hp["beta"]
    a = d["pc"] - d["rc"]
    return np.where(d["label"], 1 - _sig(b * a), _sig(b * a)), b * a, np.zeros(B)


def wpo_weight(d):
    # Zhou et al. 2024 eq. 2: w(y) = exp(mean_t [log p(y_t) - log sum_v p(v)^2]).
    return np.exp(d["apc"] / _L(d["nc"])) * np.exp(d["apr"] / _L(d["nr"]))


OWN = {"ld_dpo": ref_ld_dpo, "sampo": ref_sampo, "kto": ref_kto, "apo_zero_unpaired": ref_apo_zero_unpaired}
OWN_HP = {"ld_dpo": {"beta": 0.6, "alpha": 0.3}, "sampo": {"beta": 0.4},
          "kto": {"beta": 0.3, "desirable_weight": 1.3, "undesirable_weight": 0.8},
          "apo_zero_unpaired": {"beta": 0.5}}
for _suffix, _score in F_SCORES.items():
    OWN["ld_dpo" + _suffix] = lambda d, hp, _score=_score: ref_ld_dpo(d, hp, score=_score)
    OWN_HP["ld_dpo" + _suffix] = {**OWN_HP["ld_dpo"], **F_HP[_suffix]}
NEEDY = [n for n in losses.names() if losses.needs(n)]


def reference_and_hp(name):
    """(NumPy reference, test hyperparameters) of an objective with needs; ``<base>_wpo`` = weight * base."""
    if name in OWN:
        return OWN[name], OWN_HP[name]
    base = name[: -len("_wpo")]
    ref, hp = reference_and_hp(base) if base in OWN else (REFERENCES[base], TEST_HP[base])

    def weighted(d, hp_):
        loss, rw, rl = ref(d, hp_)
        return wpo_weight(d) * loss, rw, rl

    return weighted, hp


def run(name, d, valid=None):
    _, hp = reference_and_hp(name)
    loss, m = losses.get(name)(to_logps(d, valid), **hp)
    return np.asarray(loss, np.float64), {k: np.asarray(v, np.float64) for k, v in m.items()}


def test_needs_are_declared():
    assert losses.needs("ld_dpo") == ("shared",) and losses.needs("sampo") == ("sampled",)
    assert losses.needs("kto") == ("label",) and losses.needs("dpo_wpo") == ("aligned",)
    assert losses.needs("ld_dpo_wpo") == ("shared", "aligned")
    assert "aot_wpo" not in losses.names() and "kto_wpo" not in losses.names()  # TRL refuses sorted batches too
    siblings = {n[: -len("_wpo")] for n in losses.names() if n.endswith("_wpo")}
    assert siblings == {n for n in losses.names() if losses.requires_reference(n) and not n.endswith("_wpo")
                        and "label" not in losses.needs(n) and n not in ("aot", "aot_unpaired")}
    assert losses.hparams_of("ipo_wpo") == losses.hparams_of("ipo")
    for name in NEEDY:
        doc = losses.get(name).__doc__
        assert "Needs (PairLogps fields beyond the sums)" in doc and "(" in doc


@pytest.mark.parametrize("name", NEEDY)
@pytest.mark.parametrize("seed,scale", [(0, 4.0), (1, 40.0)])
def test_matches_reference(name, seed, scale):
    d = stats_batch(seed, scale)
    ref, hp = reference_and_hp(name)
    want = ref(d, {**losses.hparams_of(name), **hp})
    loss, m = run(name, d)
    # WPO's weight (<= 1, checked below) would shrink a saturated base loss under HUGE: compare the base's
    w = wpo_weight(d) if name.endswith("_wpo") else 1.0
    assert_close_or_saturated(loss / w, want[0] / w, rtol=3e-5, atol=1e-6, what=name)
    np.testing.assert_allclose(m["rewards/chosen"], want[1], rtol=3e-5, atol=1e-5)
    np.testing.assert_allclose(m["rewards/rejected"], want[2], rtol=3e-5, atol=1e-5)
    if name.endswith("_wpo"):
        np.testing.assert_allclose(m["wpo/weight"], wpo_weight(d), rtol=3e-5)


def _policy_fields(name):
    if "label" in losses.needs(name):
        return ("pc",)  # the KL completions (pr) enter only the baseline, under stop_gradient
    fields = ["pc", "pr"]
    if "shared" in losses.needs(name):
        fields += ["spc", "spr"]
    if "sampled" in losses.needs(name):
        fields += ["mpc", "mpr"]
    return tuple(fields)


@pytest.mark.parametrize("name", NEEDY)
def test_gradient_matches_finite_differences(name):
    d = stats_batch(5)
    ref, hp = reference_and_hp(name)
    hp_full = {**losses.hparams_of(name), **hp}
    if name.startswith("bco_pair"):
        aw, al = d["pc"] - d["rc"], d["pr"] - d["rr"]
        hp_full["delta"] = hp_full["beta"] * np.concatenate([aw, al]).mean()  # held fixed (stop_gradient)
    fields = _policy_fields(name)
    fn = losses.get(name)

    def total(values):
        dd = dict(d)
        dd.update(values)
        return fn(to_logps(dd), **hp)[0].sum()

    grads = jax.grad(total)({k: jnp.asarray(d[k], jnp.float32) for k in fields})
    # central differences lose ~eps * |loss| / h to roundoff: compare where the loss is moderate (exponential
    # f-divergence scores reach 1e11 here; their values are checked above)
    ok = np.abs(ref(d, hp_full)[0]) < 1e6
    assert ok.sum() >= B // 2
    for k in fields:
        g = np.zeros(B)
        for i in range(B):
            h = 1e-6 * max(1.0, abs(d[k][i]))
            up, dn = dict(d), dict(d)
            up[k], dn[k] = d[k].copy(), d[k].copy()
            up[k][i] += h
            dn[k][i] -= h
            g[i] = (ref(up, hp_full)[0][i] - ref(dn, hp_full)[0][i]) / (2 * h)
        np.testing.assert_allclose(np.asarray(grads[k])[ok], g[ok], rtol=1e-3, atol=1e-6, err_msg=f"{name} d/d{k}")


@pytest.mark.parametrize("name", ["dpo_wpo", "kto"])
def test_weights_and_baseline_carry_no_gradient(name):
    d = stats_batch(6)
    _, hp = reference_and_hp(name)
    field = "apc" if name == "dpo_wpo" else "pr"

    def total(v):
        return losses.get(name)(to_logps({**d, field: v}), **hp)[0].sum()

    g = jax.grad(total)(jnp.asarray(d[field], jnp.float32))
    np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_kto_baseline_clamps_at_zero_and_skips_padding():
    d = stats_batch(7)
    hp = OWN_HP["kto"]
    valid = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
    d["pr"] = d["rr"] + np.where(valid, 2.0, 1e4)  # padding KL completions would dominate the mean
    loss, m = run("kto", d, valid=jnp.asarray(valid))
    want = ref_kto(d, {**losses.hparams_of("kto"), **hp}, valid=valid)[0]
    np.testing.assert_allclose(loss[valid], want[valid], rtol=3e-5)
    assert np.all(loss[~valid] == 0.0)
    np.testing.assert_allclose(m["kl"][0], 2.0, rtol=1e-5)
    d["pr"] = d["rr"] - 3.0  # a negative KL estimate is clamped at 0 (as TRL)
    _, m = run("kto", d)
    assert np.all(m["kl"] == 0.0)


def test_ld_dpo_limits_and_sampo_with_full_sums_is_dpo():
    d = stats_batch(8)
    one = losses.get("ld_dpo")(to_logps(d), beta=0.6, alpha=1.0)[0]
    dpo = losses.get("dpo")(to_logps(d), beta=0.6)[0]
    np.testing.assert_allclose(np.asarray(one), np.asarray(dpo), rtol=1e-6)  # alpha = 1: DPO
    for k in ("pc", "pr", "rc", "rr"):
        d["m" + k] = d[k]
    np.testing.assert_allclose(np.asarray(losses.get("sampo")(to_logps(d), beta=0.6)[0]), np.asarray(dpo), rtol=1e-6)


def test_alphapo_at_alpha_zero_is_simpo_and_small_alpha_is_continuous():
    from test_objectives import to_logps as sums_only

    d = stats_batch(9)
    lp = sums_only(d, with_ref=False)
    simpo = np.asarray(losses.get("simpo")(lp, beta=2.0, gamma=0.5)[0])
    np.testing.assert_allclose(np.asarray(losses.get("alphapo")(lp, beta=2.0, alpha=0.0, gamma=0.5)[0]), simpo,
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(losses.get("alphapo")(lp, beta=2.0, alpha=1e-6, gamma=0.5)[0]), simpo,
                               rtol=1e-4)
    g = jax.grad(lambda a: losses.get("alphapo")(lp, beta=2.0, alpha=a, gamma=0.5)[0].sum())(jnp.float32(0.0))
    assert np.isfinite(float(g))


def test_missing_statistics_and_bad_hyperparameters_are_named():
    d = stats_batch(10)
    lp = to_logps(d)
    with pytest.raises(ValueError, match=r"^ld_dpo: needs PairLogps.shared"):
        losses.get("ld_dpo")(lp._replace(shared=None), beta=0.1, alpha=0.5)
    with pytest.raises(ValueError, match=r"^ld_dpo: needs PairLogps.shared.ref_chosen"):
        losses.get("ld_dpo")(lp._replace(shared=lp.shared._replace(ref_chosen=None)), beta=0.1, alpha=0.5)
    with pytest.raises(ValueError, match=r"^kto: needs PairLogps.label"):
        losses.get("kto")(lp._replace(label=None), beta=0.1)
    with pytest.raises(ValueError, match=r"^dpo_wpo: needs PairLogps.aligned"):
        losses.get("dpo_wpo")(lp._replace(aligned=None), beta=0.1)
    with pytest.raises(ValueError, match=r"^ld_dpo: alpha must be in \[0, 1\], got 1.5"):
        losses.get("ld_dpo")(lp, beta=0.1, alpha=1.5)
    with pytest.raises(ValueError, match=r"^kto: desirable_weight must be >= 0"):
        losses.get("kto")(lp, beta=0.1, desirable_weight=-1.0)
    with pytest.raises(ValueError, match=r"^alphapo: alpha must be finite"):
        losses.get("alphapo")(lp, beta=0.1, alpha=float("nan"), gamma=0.0)
    # statistics an objective does not need are dropped: dpo's result does not depend on them
    a = losses.get("dpo")(lp, beta=0.1)[0]
    b = losses.get("dpo")(lp._replace(shared=None, sampled=None, aligned=None, label=None), beta=0.1)[0]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_combined_needs_are_the_union():
    both = losses.combine({"ld_dpo": (1.0, {"beta": 0.1, "alpha": 0.5}), "dpo_wpo": (0.5, {"beta": 0.1})})
    assert both.needs == ("shared", "aligned")
    d = stats_batch(11)
    loss, _ = both(to_logps(d))
    want = ref_ld_dpo(d, {"beta": 0.1, "alpha": 0.5})[0] + 0.5 * wpo_weight(d) * REFERENCES["dpo"](
        d, {"beta": 0.1, "label_smoothing": 0.0})[0]
    np.testing.assert_allclose(np.asarray(loss), want, rtol=3e-5)
