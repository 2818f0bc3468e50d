"""Win rates with ties, and the KL estimators against independently computed float64 KLs."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lnpo.evaluate.generate import generate_ids
from lnpo.evaluate.metrics import (
    describe,
    kl_per_token_estimate,
    kl_sequence_estimate,
    sequence_logps_and_kl,
    token_logps_and_kl,
    win_rate,
    win_rates,
)
from lnpo.models import Decoder


def log_softmax64(logits) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- win rates


def test_win_rate_counts_ties_half():
    a = [3.0, 2.0, 2.0, 1.0, 0.5]
    b = [1.0, 2.0, 3.0, 0.0, 0.5]
    np.testing.assert_array_equal(win_rates(a, b), [1.0, 0.5, 0.0, 1.0, 0.5])
    assert win_rate(a, b) == pytest.approx(3.0 / 5.0)
    assert win_rate(b, a) == pytest.approx(2.0 / 5.0)  # a's ties are b's ties: the two sum to 1
    assert win_rate([1.0] * 4, [1.0] * 4) == 0.5
    assert win_rate([1.0, 0.0], [0.0, 1.0]) == 0.5
    assert np.isnan(win_rate([], []))
    with pytest.raises(ValueError, match="paired"):
        win_rate([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        win_rate([np.nan], [1.0])


def test_describe_and_empty():
    d = describe([1.0, 2.0, 3.0, 4.0], "x")
    assert d["x_mean"] == 2.5 and d["x_median"] == 2.5 and d["x_min"] == 1.0 and d["x_max"] == 4.0
    assert d["x_p90"] == pytest.approx(np.percentile([1, 2, 3, 4], 90))
    assert all(v is None for v in describe([], "y").values())


# ----------------------------------------------------------------------------- KL estimators


def test_monte_carlo_kl_converges_on_categoricals():
    rng = np.random.default_rng(0)
    V, N, n = 10, 20000, 3
    log_p = log_softmax64(rng.normal(size=V) * 1.5)
    log_q = log_softmax64(rng.normal(size=V) * 1.5)
    exact = float(np.sum(np.exp(log_p) * (log_p - log_q)))
    assert exact > 0.1
    # sequences of n independent tokens: KL of the sequences is n * exact
    x = rng.choice(V, size=(N, n), p=np.exp(log_p))
    lp, lq = log_p[x].sum(axis=1), log_q[x].sum(axis=1)
    se = np.std(lp - lq) / np.sqrt(N)
    assert abs(kl_sequence_estimate(lp, lq) - n * exact) < 4 * se
    assert abs(kl_per_token_estimate(lp, lq, np.full(N, n)) - exact) < 4 * se / n
    # per-token normalization divides each sample by its own length
    assert kl_per_token_estimate([-3.0, -2.0], [-5.0, -2.5], [2, 1]) == pytest.approx((1.0 + 0.5) / 2)
    # samples from q instead of p do not estimate KL(p || q)
    y = rng.choice(V, size=(N, n), p=np.exp(log_q))
    assert abs(kl_sequence_estimate(log_p[y].sum(1), log_q[y].sum(1)) - n * exact) > 10 * se


def test_exact_per_position_kl_equals_numpy(tiny_model, other_model, forward):
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 96, size=(3, 12)).astype(np.int32)
    targets = np.roll(ids, -1, axis=1)

    @jax.jit
    def f(ids, targets):
        hp, hq = tiny_model.hidden_states(ids), other_model.hidden_states(ids)
        return token_logps_and_kl(hp, tiny_model.unembed, hq, other_model.unembed, targets, chunk_size=5)

    tp, tq, kl = (np.asarray(x, np.float64) for x in f(jnp.asarray(ids), jnp.asarray(targets)))
    lp = log_softmax64(forward(tiny_model, ids))
    lq = log_softmax64(forward(other_model, ids))
    ref_kl = np.sum(np.exp(lp) * (lp - lq), axis=-1)
    assert ref_kl.min() > 1e-3
    np.testing.assert_allclose(kl, ref_kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tp, np.take_along_axis(lp, targets[..., None], -1)[..., 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tq, np.take_along_axis(lq, targets[..., None], -1)[..., 0], rtol=1e-5, atol=1e-5)


def test_sequence_kl_estimators_on_tiny_models(tiny_config, forward):
    """Sampled responses (generate_ids, temperature 1) of two tiny models with an 8-token vocabulary:
    the MC and the exact per-position estimates converge to the sequence KL computed by enumerating
    all 64 two-token responses in float64, and the samples follow the policy's sequence distribution."""
    V, N, prompt = 8, 2000, [1, 2, 3]
    policy = Decoder(tiny_config(vocab_size=V, initializer_range=0.6), rngs=nnx.Rngs(3))
    sft = Decoder(tiny_config(vocab_size=V, initializer_range=0.6), rngs=nnx.Rngs(4))
    seqs = np.asarray([prompt + list(y) for y in itertools.product(range(V), repeat=2)], np.int32)  # [64, 5]
    P = len(prompt)

    def seq_logp(model):
        lp = log_softmax64(forward(model, seqs))
        rows = np.arange(len(seqs))
        return lp[rows, P - 1, seqs[:, P]] + lp[rows, P, seqs[:, P + 1]]

    log_p, log_q = seq_logp(policy), seq_logp(sft)
    np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, rtol=1e-6)
    exact = float(np.sum(np.exp(log_p) * (log_p - log_q)))
    assert exact > 0.05

    samples = generate_ids(policy, [prompt], max_new_tokens=2, temperature=1.0, num_samples=N, seed=0,
                           batch_size=N)
    responses = [s["response_ids"] for s in samples]
    assert all(len(r) == 2 for r in responses)
    index = np.asarray([r[0] * V + r[1] for r in responses])
    freq = np.bincount(index, minlength=V * V) / N
    assert np.abs(freq - np.exp(log_p)).max() < 0.04

    out = sequence_logps_and_kl(policy, sft, [prompt] * N, responses, batch_size=N, chunk_size=4)
    np.testing.assert_allclose(out["logp_policy"], log_p[index], atol=2e-4)
    np.testing.assert_allclose(out["logp_sft"], log_q[index], atol=2e-4)
    assert (out["num_tokens"] == 2).all()
    ratio = out["logp_policy"] - out["logp_sft"]
    assert abs(kl_sequence_estimate(out["logp_policy"], out["logp_sft"]) - exact) < 4 * ratio.std() / np.sqrt(N)
    assert (out["kl_exact"] >= -1e-6).all()
    assert abs(out["kl_exact"].mean() - exact) < 4 * out["kl_exact"].std() / np.sqrt(N) + 1e-6

    same = sequence_logps_and_kl(policy, policy, [prompt] * N, responses, batch_size=N, chunk_size=4)
    assert np.abs(same["logp_policy"] - same["logp_sft"]).max() == 0.0
    assert np.abs(same["kl_exact"]).max() < 1e-6
