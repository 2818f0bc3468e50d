"""Cached batched sampling: greedy equals full-forward argmax decoding; seeds; top-k / top-p; EOS; stop strings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnpo.evaluate.generate import generate, generate_ids, sample_logits

VOCAB = 96  # tests/evaluate/conftest.py: tiny_config's vocabulary

PROMPTS = [[5, 17, 33, 2, 80], [7, 9], [11, 12, 13, 14, 15, 16, 17, 18, 19]]  # different lengths, one batch
STEPS = 6
T_MAX = 16


def greedy_reference(forward, model, prompts, steps):
    """Argmax decoding with a full forward pass (no cache) over prompt + generated tokens at every step."""
    out = []
    for p in prompts:
        seq = list(p)
        for _ in range(steps):
            ids = np.zeros((1, T_MAX), np.int32)  # right padding after the sequence: causal, so it changes nothing
            ids[0, : len(seq)] = seq
            logits = forward(model, ids)[0, len(seq) - 1]
            seq.append(int(np.argmax(logits)))
        out.append(seq[len(p):])
    return out


@pytest.fixture(scope="module")
def greedy(tiny_model, forward):
    return greedy_reference(forward, tiny_model, PROMPTS, STEPS)


def _ids(results):
    return [r["response_ids"] for r in results]


def test_greedy_cached_sampling_equals_full_forward_argmax(tiny_model, greedy):
    res = generate_ids(tiny_model, PROMPTS, max_new_tokens=STEPS, temperature=0.0, batch_size=3)
    assert [(r["prompt_index"], r["sample"]) for r in res] == [(0, 0), (1, 0), (2, 0)]
    assert _ids(res) == greedy
    assert not any(r["finished"] for r in res)
    # the greedy sequences are not trivial (the test could fail on a wrong cache / padding)
    assert len({tuple(g) for g in greedy}) == 3


def test_top_k_1_equals_greedy(tiny_model, greedy):
    res = generate_ids(tiny_model, PROMPTS, max_new_tokens=STEPS, temperature=1.0, top_k=1, seed=3, batch_size=3)
    assert _ids(res) == greedy


def test_seed_determinism(tiny_model, greedy):
    kw = dict(max_new_tokens=STEPS, temperature=1.0, num_samples=2, batch_size=3)
    a = generate_ids(tiny_model, PROMPTS, seed=0, **kw)
    b = generate_ids(tiny_model, PROMPTS, seed=0, **kw)
    c = generate_ids(tiny_model, PROMPTS, seed=1, **kw)
    assert len(a) == 6 and [(r["prompt_index"], r["sample"]) for r in a] == [(p, s) for p in range(3) for s in range(2)]
    assert _ids(a) == _ids(b)
    assert _ids(a) != _ids(c)
    assert a[0]["response_ids"] != a[1]["response_ids"]  # two samples of one prompt differ
    assert _ids(a)[::2] != greedy  # it samples
    for r in a:
        assert all(0 <= t < VOCAB for t in r["response_ids"]) and len(r["response_ids"]) == STEPS


def test_stops_at_eos(tiny_model, greedy):
    eos = greedy[0][2]
    res = generate_ids(tiny_model, PROMPTS, max_new_tokens=STEPS, temperature=0.0, eos_ids=(eos,), batch_size=3)
    for r, g in zip(res, greedy):
        if eos in g:
            cut = g.index(eos) + 1
            assert r["response_ids"] == g[:cut] and r["finished"]
        else:
            assert r["response_ids"] == g and not r["finished"]
    assert res[0]["response_ids"][-1] == eos and len(res[0]["response_ids"]) <= 3


def test_eos_ends_sampled_rows(tiny_model):
    """With sampling, a row's response holds no token after its first EOS."""
    res = generate_ids(tiny_model, PROMPTS, max_new_tokens=STEPS, temperature=1.0, num_samples=2, batch_size=3,
                       seed=5, eos_ids=tuple(range(0, VOCAB, 3)))  # a third of the vocabulary ends a response
    assert any(r["finished"] for r in res)
    for r in res:
        ends = [i for i, t in enumerate(r["response_ids"]) if t % 3 == 0]
        if r["finished"]:
            assert ends == [len(r["response_ids"]) - 1]
        else:
            assert ends == [] and len(r["response_ids"]) == STEPS


def test_sample_logits_top_p_and_top_k():
    probs = np.asarray([0.5, 0.3, 0.15, 0.05])
    logits = jnp.log(jnp.asarray(np.tile(probs, (4000, 1)), jnp.float32))
    keys = jax.random.split(jax.random.key(0), 4000)
    sample = jax.jit(lambda t, k, p: sample_logits(logits, keys, temperature=t, top_k=k, top_p=p))

    def freq(t=1.0, k=0, p=1.0):
        tok = np.asarray(sample(np.float32(t), np.int32(k), np.float32(p)))
        return np.bincount(tok, minlength=4) / tok.size

    np.testing.assert_allclose(freq(), probs, atol=0.03)
    f = freq(p=0.6)  # nucleus {0, 1}: 0.5 < 0.6 <= 0.8
    assert f[2] == 0 and f[3] == 0
    np.testing.assert_allclose(f[:2], [0.5 / 0.8, 0.3 / 0.8], atol=0.03)
    f = freq(k=3)
    assert f[3] == 0 and (f[:3] > 0).all()
    np.testing.assert_allclose(f[:3], probs[:3] / 0.95, atol=0.03)
    assert freq(k=2, p=0.5)[0] == 1.0  # top-k then top-p on the renormalized two: 0.625 >= 0.5
    assert freq(p=0.01)[0] == 1.0
    assert freq(t=0.0)[0] == 1.0  # greedy
    f = freq(t=2.0)  # flatter: p ** (1/2), renormalized
    np.testing.assert_allclose(f, np.sqrt(probs) / np.sqrt(probs).sum(), atol=0.03)


CHAT_PROMPTS = [[{"role": "user", "content": "What is 3 + 4?"}], "Write apple two times.",
                [{"role": "user", "content": "What comes after 41?"}], "Pick the larger of 3 and 9."]


def test_generate_chat_prompts_and_stop_strings(task, saved_models):
    from lnpo.data.tokenize import Encoder, TokenizeConfig
    from lnpo.models import from_pretrained

    tok = task["tokenizer_obj"]
    model = from_pretrained(saved_models["policy"])
    res = generate(model, tok, CHAT_PROMPTS, max_new_tokens=8, temperature=0.0, batch_size=4)
    enc = Encoder(tok, TokenizeConfig(max_len=64))
    assert res[0]["prompt_ids"] == enc.prompt_ids(CHAT_PROMPTS[0])
    assert res[1]["prompt_ids"] == enc.prompt_ids([{"role": "user", "content": CHAT_PROMPTS[1]}])
    assert res[0]["prompt_ids"][-1] == tok.convert_tokens_to_ids("<|assistant|>")
    for r in res:
        body = r["response_ids"][:-1] if r["stop_reason"] == "eos" else r["response_ids"]
        assert r["response_text"] == tok.decode(body, skip_special_tokens=True)
        assert r["stop_reason"] in ("eos", "length")

    # stop at a string that the greedy response contains (from its third token on)
    r0 = res[0]
    stop = tok.decode(r0["response_ids"][2:4], skip_special_tokens=True)
    assert stop and stop in r0["response_text"]
    cut = generate(model, tok, CHAT_PROMPTS, max_new_tokens=8, temperature=0.0, batch_size=4, stop_strings=[stop])[0]
    assert cut["stop_reason"] == "stop_string"
    assert cut["response_text"] == r0["response_text"][: r0["response_text"].find(stop)]
    assert stop not in cut["response_text"]
    n = len(cut["response_ids"])
    assert cut["response_ids"] == r0["response_ids"][:n]
    assert stop in tok.decode(cut["response_ids"], skip_special_tokens=True)
    assert stop not in tok.decode(cut["response_ids"][:-1], skip_special_tokens=True)
