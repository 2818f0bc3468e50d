"""The per-token statistics an objective declares (``needs``) are computed by the step, in every layout.

Independent reference: a plain one-sequence forward pass per completion (``model(ids)``, float64 NumPy
log-softmax), from which the shared-prefix sums (LD-DPO), the aligned sums (WPO) and the sampled-subset
sizes (SamPO) are taken directly; the step's values must match them in the padded, packed and
shared-prompt layouts, with the reference in the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lnpo import logprobs, losses
from lnpo.data.layouts import LAYOUTS, layout_pairs
from lnpo.models import Decoder, ModelConfig
from lnpo.train import steps

V = 64


def _model(seed):
    return Decoder(ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                               num_kv_heads=1), rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    tok = lambda n: rng.integers(3, V, int(n)).tolist()  # noqa: E731
    pairs = [{"prompt_ids": tok(rng.integers(2, 6)), "chosen_ids": tok(rng.integers(1, 9)),
              "rejected_ids": tok(rng.integers(1, 9))} for _ in range(5)]
    return pairs, _model(0), _model(1)


def _per_token(model, pairs):
    """Per sequence (2i chosen, 2i+1 rejected): float64 arrays (log p(y_t), log sum_v p(v)^2) over its tokens."""
    out = []
    for ex in pairs:
        for key in ("chosen_ids", "rejected_ids"):
            ids = np.asarray([ex["prompt_ids"] + ex[key]], np.int32)
            logits = np.asarray(model(jnp.asarray(ids)), np.float64)[0]
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            p = len(ex["prompt_ids"])
            t = np.arange(p - 1, ids.shape[1] - 1)
            out.append((logp[t, ids[0, t + 1]], np.log(np.exp(2 * logp[t]).sum(-1))))
    return out


def _batch(pairs, layout):
    mb = {k: jnp.asarray(v) for k, v in layout_pairs(pairs, layout, 48).items()}
    mb["example_valid"] = jnp.ones(len(pairs), jnp.float32)
    return mb


_KEY = jax.random.key(0)  # _statistics's default key


def _statistics(model, reference, mb, needs, num_pairs, key=_KEY):
    tokens, log_sum_sq = logprobs.batch_token_logps(model, mb, 16, with_log_sum_sq=True)
    _, counts = logprobs.sequence_logps(tokens, mb["seq_index"], 2 * num_pairs)
    ref_tokens = logprobs.batch_token_logps(reference, mb, 16)
    return steps.pair_statistics(mb, needs, counts, tokens, ref_tokens, log_sum_sq, key)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_shared_and_aligned_sums_match_a_plain_forward_pass(setup, layout):
    pairs, model, reference = setup
    policy, ref = _per_token(model, pairs), _per_token(reference, pairs)
    stats = _statistics(model, reference, _batch(pairs, layout), ("shared", "aligned"), len(pairs))
    for i in range(len(pairs)):
        k = min(len(policy[2 * i][0]), len(policy[2 * i + 1][0]))
        s = stats["shared"]
        np.testing.assert_allclose(
            [s.policy_chosen[i], s.policy_rejected[i], s.ref_chosen[i], s.ref_rejected[i]],
            [policy[2 * i][0][:k].sum(), policy[2 * i + 1][0][:k].sum(), ref[2 * i][0][:k].sum(),
             ref[2 * i + 1][0][:k].sum()], rtol=1e-5, atol=1e-4)
        a = stats["aligned"]
        assert a.ref_chosen is None and a.ref_rejected is None
        np.testing.assert_allclose(
            [a.policy_chosen[i], a.policy_rejected[i]],
            [(policy[2 * i][0] - policy[2 * i][1]).sum(), (policy[2 * i + 1][0] - policy[2 * i + 1][1]).sum()],
            rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sampled_tokens_are_min_length_subsets_shared_by_policy_and_reference(setup, layout):
    pairs, model, reference = setup
    mb = _batch(pairs, layout)
    n = 2 * len(pairs)
    _, counts = logprobs.sequence_logps(jnp.zeros(mb["seq_index"].shape), mb["seq_index"], n)
    mask = np.asarray(logprobs.sampled_mask(mb["seq_index"], counts, jax.random.key(3)))
    seq = np.asarray(mb["seq_index"])
    counts = np.asarray(counts)
    for i in range(len(pairs)):
        k = min(counts[2 * i], counts[2 * i + 1])
        for s in (2 * i, 2 * i + 1):
            assert mask[seq == s].sum() == k
    assert not mask[seq < 0].any()
    # same key -> same draw; another key -> another draw (somewhere)
    again = np.asarray(logprobs.sampled_mask(mb["seq_index"], jnp.asarray(counts), jax.random.key(3)))
    other = np.asarray(logprobs.sampled_mask(mb["seq_index"], jnp.asarray(counts), jax.random.key(4)))
    np.testing.assert_array_equal(mask, again)
    assert (mask != other).any()
    # the sampled sums of policy and reference are over the same tokens
    stats = _statistics(model, reference, mb, ("sampled",), len(pairs), jax.random.key(3))
    tokens = np.asarray(logprobs.batch_token_logps(model, mb, 16))
    ref_tokens = np.asarray(logprobs.batch_token_logps(reference, mb, 16))
    for i in range(len(pairs)):
        for s, pol, rf in ((2 * i, stats["sampled"].policy_chosen, stats["sampled"].ref_chosen),
                           (2 * i + 1, stats["sampled"].policy_rejected, stats["sampled"].ref_rejected)):
            sel = mask & (seq == s)
            np.testing.assert_allclose(float(pol[i]), tokens[sel].sum(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(float(rf[i]), ref_tokens[sel].sum(), rtol=1e-5, atol=1e-5)


def test_sampling_is_uniform_without_replacement():
    """One sequence of 6 targets paired with one of 2: each of the 6 positions is drawn with probability 2/6."""
    seq = np.full((1, 12), -1, np.int32)
    seq[0, 1:7] = 0
    seq[0, 8:10] = 1
    counts = jnp.asarray([6, 2], jnp.int32)
    masks = jax.vmap(lambda k: logprobs.sampled_mask(jnp.asarray(seq), counts, k))(
        jax.random.split(jax.random.key(0), 3000))
    freq = np.asarray(masks)[:, 0, 1:7].mean(0)
    np.testing.assert_allclose(freq, 1 / 3, atol=0.04)
    assert np.asarray(masks)[:, 0, 8:10].all()  # the shorter sequence keeps every token
    assert (np.asarray(masks)[:, 0, 1:7].sum(-1) == 2).all()


def _ld_reference(policy, ref, alpha, beta):
    out = []
    for i in range(len(policy) // 2):
        k = min(len(policy[2 * i][0]), len(policy[2 * i + 1][0]))
        ld = lambda t, k=k: t[:k].sum() + alpha * t[k:].sum()  # noqa: E731
        m = (ld(policy[2 * i][0]) - ld(ref[2 * i][0])) - (ld(policy[2 * i + 1][0]) - ld(ref[2 * i + 1][0]))
        out.append(np.logaddexp(0.0, -beta * m))
    return np.sum(out)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ld_dpo_and_wpo_losses_through_the_step_match_the_plain_forward_pass(setup, layout):
    pairs, model, reference = setup
    policy, ref = _per_token(model, pairs), _per_token(reference, pairs)
    mb = _batch(pairs, layout)
    hp = {"beta": jnp.float32(0.5), "alpha": jnp.float32(0.3)}
    got = steps.po_micro_sums(model, mb, objective=losses.get("ld_dpo"), hparams=hp, num_pairs=len(pairs),
                              chunk_size=16, reference=reference)
    np.testing.assert_allclose(float(got.sums["loss"]), _ld_reference(policy, ref, 0.3, 0.5), rtol=1e-5)
    got = steps.po_micro_sums(model, mb, objective=losses.get("dpo_wpo"),
                              hparams={"beta": jnp.float32(0.5), "label_smoothing": jnp.float32(0.0)},
                              num_pairs=len(pairs), chunk_size=16, reference=reference)
    expected = 0.0
    for i in range(len(pairs)):
        m = (policy[2 * i][0].sum() - ref[2 * i][0].sum()) - (policy[2 * i + 1][0].sum() - ref[2 * i + 1][0].sum())
        w = np.exp(np.mean(policy[2 * i][0] - policy[2 * i][1]) + np.mean(policy[2 * i + 1][0] - policy[2 * i + 1][1]))
        expected += w * np.logaddexp(0.0, -0.5 * m)
    np.testing.assert_allclose(float(got.sums["loss"]), expected, rtol=1e-5)


def _primitives(jaxpr) -> list[str]:
    """Names of every primitive in ``jaxpr`` and its sub-jaxprs (scan / map / checkpoint bodies)."""
    out = []
    for eqn in jaxpr.eqns:
        out.append(eqn.primitive.name)
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out.extend(_primitives(inner))
    return out


def test_dpo_step_computes_no_statistics(setup):
    """DPO declares no needs: its traced step has no sort (SamPO), no second log-sum-exp (WPO) and no
    target ranks (segment min): only the summed log-probs."""
    pairs, model, reference = setup
    mb = _batch(pairs, "padded")

    def program(name, hp):
        f = lambda m, r, b: steps.po_micro_sums(m, b, objective=losses.get(name), hparams=hp,  # noqa: E731
                                                num_pairs=len(pairs), chunk_size=16, reference=r)
        return _primitives(jax.make_jaxpr(lambda b: f(model, reference, b))(mb).jaxpr)

    dpo = program("dpo", {"beta": jnp.float32(0.5), "label_smoothing": jnp.float32(0.0)})
    sampo = program("sampo", {"beta": jnp.float32(0.5)})
    wpo = program("dpo_wpo", {"beta": jnp.float32(0.5), "label_smoothing": jnp.float32(0.0)})
    assert "sort" not in dpo and "sort" in sampo
    ld = program("ld_dpo", {"beta": jnp.float32(0.5), "alpha": jnp.float32(0.5)})
    assert "scatter-min" not in dpo and "scatter-min" in ld  # the target ranks of the shared prefix
    assert dpo.count("reduce_max") < wpo.count("reduce_max")
    assert losses.needs("dpo") == () and losses.get("dpo").needs == ()


def test_sampo_with_a_cached_reference_is_refused(setup):
    pairs, model, _ = setup
    mb = _batch(pairs, "padded")
    mb["ref_chosen"] = mb["ref_rejected"] = jnp.zeros(len(pairs))
    with pytest.raises(ValueError, match="in_step"):
        steps.po_micro_sums(model, mb, objective=losses.get("sampo"), hparams={"beta": jnp.float32(0.5)},
                            num_pairs=len(pairs), chunk_size=16)
