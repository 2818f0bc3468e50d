"""lnpo.evaluate.sample_cache: the SFT model's samples, sampled once per (model, tokenizer, prompts, settings)."""

from __future__ import annotations

import json
import os
from unittest import mock

import pytest

from lnpo.evaluate import EvalSettings, evaluate_run, sample_cache
from lnpo.evaluate import evaluate as evaluate_module

SETTINGS = EvalSettings(max_new_tokens=8, temperature=1.0, num_samples=2, seed=0, batch_size=4)
POLICY_KEYS = ("score_mean", "sft_score_mean", "win_rate_vs_sft", "kl_exact_mean", "sft_length_tokens_mean")


@pytest.fixture()
def count_generate(monkeypatch):
    """Count the calls of the evaluator's ``generate`` (policy + SFT)."""
    calls = []
    original = evaluate_module.generate

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "generate", counted)
    return calls


def _run(saved_models, task, out, cache, settings=SETTINGS, policy="policy"):
    return evaluate_run(saved_models[policy], saved_models["sft"], task["ood_prompts"], str(out), scorer="embedded",
                        settings=settings, sft_samples_dir=cache)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_second_run_reuses_the_sft_samples_and_gives_the_same_results(saved_models, task, tmp_path,
                                                                      count_generate):
    cache = str(tmp_path / "sft_samples")
    fresh = _run(saved_models, task, tmp_path / "fresh", None)
    assert len(count_generate) == 2  # policy + SFT
    first = _run(saved_models, task, tmp_path / "first", cache)
    assert len(count_generate) == 4 and len(os.listdir(cache)) == 2  # the samples file and the weights memo
    second = _run(saved_models, task, tmp_path / "second", cache)
    assert len(count_generate) == 5  # only the policy sampled
    for k in POLICY_KEYS:
        assert first[k] == second[k] == fresh[k], k
    assert (_read(tmp_path / "second" / "sft_samples.jsonl") == _read(tmp_path / "first" / "sft_samples.jsonl")
            == _read(tmp_path / "fresh" / "sft_samples.jsonl"))


def test_other_settings_or_weights_sample_again(saved_models, task, tmp_path, count_generate):
    cache = str(tmp_path / "sft_samples")
    _run(saved_models, task, tmp_path / "a", cache)
    _run(saved_models, task, tmp_path / "b", cache, settings=SETTINGS.replace(seed=1))
    assert len(count_generate) == 4
    files = [n for n in os.listdir(cache) if n.startswith("sft-samples-")]
    assert len(files) == 2
    # The same settings under another SFT model (other weights in the SFT slot) is another key.
    other = evaluate_run(saved_models["policy"], saved_models["policy_copy"], task["ood_prompts"],
                         str(tmp_path / "c"), scorer="embedded", settings=SETTINGS, sft_samples_dir=cache)
    assert len(count_generate) == 6 and other["sft_score_mean"] is not None
    assert len([n for n in os.listdir(cache) if n.startswith("sft-samples-")]) == 3


@pytest.mark.parametrize("damage", ["truncate", "edit", "swap_key"])
def test_a_damaged_cache_file_is_reported_and_sampled_again(saved_models, task, tmp_path, count_generate, capsys,
                                                            damage):
    cache = str(tmp_path / "sft_samples")
    first = _run(saved_models, task, tmp_path / "a", cache)
    (name,) = [n for n in os.listdir(cache) if n.startswith("sft-samples-")]
    path = os.path.join(cache, name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if damage == "truncate":
        text = text[: len(text) // 2]
    elif damage == "edit":
        record = json.loads(text)
        record["samples"][0]["response_text"] += " extra"
        text = json.dumps(record)
    else:
        record = json.loads(text)
        record["key"] = "0" * 24
        text = json.dumps(record)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    capsys.readouterr()
    again = _run(saved_models, task, tmp_path / "b", cache)
    assert len(count_generate) == 4  # the SFT model sampled again
    assert f"SFT sample cache {path}" in capsys.readouterr().out
    assert again["sft_score_mean"] == first["sft_score_mean"]
    assert sample_cache.load(cache, name[len("sft-samples-"):-len(".json")], again["num_samples"]) is not None


def test_the_key_covers_the_tokenizer_prompts_and_settings(saved_models, task, tmp_path):
    tok = task["tokenizer_obj"]
    memo = str(tmp_path)
    base = sample_cache.cache_key(saved_models["sft"], tok, [[{"role": "user", "content": "a"}]], {"seed": 0},
                                  memo_dir=memo)
    assert base == sample_cache.cache_key(saved_models["sft"], tok, [[{"role": "user", "content": "a"}]],
                                          {"seed": 0}, memo_dir=memo)
    assert base != sample_cache.cache_key(saved_models["sft"], tok, [[{"role": "user", "content": "b"}]],
                                          {"seed": 0}, memo_dir=memo)
    assert base != sample_cache.cache_key(saved_models["sft"], tok, [[{"role": "user", "content": "a"}]],
                                          {"seed": 1}, memo_dir=memo)
    with mock.patch.object(tok, "chat_template", "{{ messages }}"):
        assert base != sample_cache.cache_key(saved_models["sft"], tok, [[{"role": "user", "content": "a"}]],
                                              {"seed": 0}, memo_dir=memo)
