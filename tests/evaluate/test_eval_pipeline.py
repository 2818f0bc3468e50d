"""evaluate_run / evaluate_workdir / ``python -m lnpo.evaluate`` end to end on tiny models and the embedded task."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lnpo.evaluate import EvalSettings, evaluate_run
from lnpo.evaluate.__main__ import main as evaluate_main
from lnpo.evaluate.scorers import Scorer

SETTINGS = EvalSettings(max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=0, num_samples=2, seed=0, batch_size=4)
KEYS = ("score_mean", "score_median", "score_p90", "win_rate_vs_chosen", "win_rate_vs_sft", "kl_seq_mean",
        "kl_per_token_mean", "kl_exact_mean", "kl_exact_per_token_mean", "length_tokens_mean",
        "length_tokens_median", "length_tokens_p90", "length_words_mean", "length_words_median",
        "length_words_p90", "chosen_score_mean", "sft_score_mean", "sft_length_tokens_mean", "eos_fraction")


class CharLengthScorer(Scorer):
    """Score = number of characters: non-constant on random text, so win rates are informative."""

    spec = "test:chars"

    def score(self, prompts, responses):
        self._check(prompts, responses)
        return np.asarray([len(r) for r in responses], np.float64)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def embedded_run(task, saved_models, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval"))
    summary = evaluate_run(saved_models["policy"], saved_models["sft"], task["ood_prompts"], out, scorer="embedded",
                           cache_dir=str(tmp_path_factory.mktemp("ds_cache")), settings=SETTINGS)
    return summary, out


def test_evaluate_run_summary_and_samples(embedded_run, task):
    summary, out = embedded_run
    for k in KEYS:
        assert isinstance(summary[k], float), k
    assert summary["num_prompts"] == 5 and summary["num_samples"] == 10 and summary["scorer"] == "embedded"
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        assert json.load(f) == summary
    rows = read_jsonl(os.path.join(out, "samples.jsonl"))
    sft_rows = read_jsonl(os.path.join(out, "sft_samples.jsonl"))
    assert len(rows) == len(sft_rows) == 10
    assert [(r["prompt_index"], r["sample"]) for r in rows] == [(p, s) for p in range(5) for s in range(2)]
    with open(task["ood_prompts"], encoding="utf-8") as f:
        source = [json.loads(line) for line in f]
    for r in rows:
        src = source[r["prompt_index"]]
        assert r["prompt"] == src["prompt"] and r["chosen"] == src["chosen"][0]["content"]
        assert r["chosen_score"] == 1.0  # the embedded chosen answer is the correct concise one
        assert 1 <= r["num_tokens"] <= 8
        assert r["length_tokens"] == r["num_tokens"] - (r["stop_reason"] == "eos")
        assert r["length_words"] == len(r["response"].split())
        assert r["kl_seq"] == pytest.approx(r["logp_policy"] - r["logp_sft"])
        assert r["kl_per_token"] == pytest.approx(r["kl_seq"] / r["num_tokens"])
        assert r["kl_exact"] > 0
        assert r["logp_policy"] < 0 and r["logp_sft"] < 0

    def mean(key):
        return float(np.mean([r[key] for r in rows]))

    assert summary["score_mean"] == pytest.approx(mean("score"))
    assert summary["score_median"] == pytest.approx(float(np.median([r["score"] for r in rows])))
    assert summary["chosen_score_mean"] == 1.0
    assert summary["win_rate_vs_chosen"] == pytest.approx(mean("win_vs_chosen"))
    assert summary["win_rate_vs_sft"] == pytest.approx(mean("win_vs_sft"))
    assert summary["kl_seq_mean"] == pytest.approx(mean("kl_seq"))
    assert summary["kl_per_token_mean"] == pytest.approx(mean("kl_per_token"))
    assert summary["kl_exact_mean"] == pytest.approx(mean("kl_exact"))
    assert summary["kl_exact_mean"] > 0
    assert summary["length_tokens_mean"] == pytest.approx(mean("length_tokens"))
    assert summary["length_tokens_p90"] == pytest.approx(float(np.percentile([r["length_tokens"] for r in rows], 90)))
    assert summary["length_words_mean"] == pytest.approx(mean("length_words"))
    assert summary["sft_length_tokens_mean"] == pytest.approx(float(np.mean([r["length_tokens"] for r in sft_rows])))
    assert [r["sft_response"] for r in rows] == [r["response"] for r in sft_rows]


def test_model_against_itself(saved_models, task, tmp_path):
    """The SFT model = the policy's weights in another directory: zero KL, identical samples, win rate 1/2."""
    out = str(tmp_path / "eval")
    summary = evaluate_run(saved_models["policy"], saved_models["policy_copy"], task["ood_prompts"], out,
                           scorer=CharLengthScorer(), cache_dir=str(tmp_path / "cache"), settings=SETTINGS)
    for k in ("kl_seq_mean", "kl_per_token_mean", "kl_exact_mean", "kl_exact_max", "kl_seq_max", "kl_seq_min"):
        assert abs(summary[k]) < 1e-6, k
    assert summary["win_rate_vs_sft"] == 0.5
    rows = read_jsonl(os.path.join(out, "samples.jsonl"))
    assert all(r["response"] == r["sft_response"] for r in rows)
    lengths = np.asarray([len(r["response"]) for r in rows], float)
    chosen = np.asarray([len(r["chosen"]) for r in rows], float)
    assert summary["win_rate_vs_chosen"] == pytest.approx(np.mean((lengths > chosen) + 0.5 * (lengths == chosen)))
    assert summary["score_mean"] == pytest.approx(lengths.mean()) and summary["scorer"] == "test:chars"


def test_cli_workdir_and_model_modes(embedded_run, saved_models, task, tmp_path, capsys):
    summary, _ = embedded_run
    work = tmp_path / "run"
    work.mkdir()
    (work / "run.json").write_text(json.dumps({
        "method": "ln_dpo", "loss": {"beta": 0.1}, "lr": 1e-5, "seed": 0, "export": saved_models["policy"],
        "sft_path": saved_models["sft"], "eval_prompts": task["ood_prompts"], "scorer": "embedded",
        "eval": {"max_new_tokens": 8, "num_samples": 2, "batch_size": 4}}))
    assert evaluate_main([f"--workdir={work}"]) == 0
    with open(work / "eval" / "summary.json", encoding="utf-8") as f:
        got = json.load(f)
    for k in KEYS:  # same settings and seed: the same numbers as evaluate_run
        assert got[k] == pytest.approx(summary[k], rel=1e-6, abs=1e-9), k
    assert json.loads(capsys.readouterr().out)["kl_seq_mean"] == pytest.approx(summary["kl_seq_mean"])

    out = tmp_path / "direct"
    assert evaluate_main([f"--model={saved_models['policy']}", f"--prompts={task['ood_prompts']}", f"--out={out}",
                          "--scorer=embedded", "--max_new_tokens=8", "--num_samples=2", "--batch_size=4",
                          "--max_prompts=2"]) == 0
    with open(out / "summary.json", encoding="utf-8") as f:
        direct = json.load(f)
    assert direct["num_prompts"] == 2 and direct["kl_seq_mean"] is None and direct["win_rate_vs_sft"] is None
    assert isinstance(direct["score_mean"], float) and not (out / "sft_samples.jsonl").exists()

    assert evaluate_main([f"--workdir={tmp_path / 'nothing'}"]) == 2
    assert "run.json" in capsys.readouterr().err
