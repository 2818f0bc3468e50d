"""``lnpo.report``: tables and figures from fixture run directories; failed runs are listed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lnpo.report import FIGURES, build_report, main

GRID = {  # method -> [(hyperparameters, mean score)]
    "dpo": [({"beta": 0.01}, 0.42), ({"beta": 0.1}, 0.55), ({"beta": 0.5}, 0.61)],
    "ln_dpo": [({"beta": 0.5}, 0.66), ({"beta": 1.0}, 0.71), ({"beta": 2.0}, 0.69)],
    "simpo": [({"beta": 2.0, "gamma": 0.5}, 0.58), ({"beta": 2.0, "gamma": 1.0}, 0.64),
              ({"beta": 10.0, "gamma": 0.5}, 0.49)],
}


def write_run(root, name, method, hparams, score, rng, *, eval_=True):
    d = os.path.join(root, name)
    os.makedirs(os.path.join(d, "eval"), exist_ok=True)
    with open(os.path.join(d, "run.json"), "w") as f:
        json.dump({"name": name, "stage": "po", "method": method, "loss": {"name": method, **hparams}, "lr": 1e-5,
                   "seed": 0, "sft_path": "/sft", "eval_prompts": "/ood.jsonl", "scorer": "embedded",
                   "status": "trained"}, f)
    if not eval_:
        return
    n = 6
    scores = np.clip(score + rng.normal(0, 0.2, n), 0, 1)
    lengths = rng.integers(5, 40, n)
    kl = rng.gamma(2.0, 0.5, n)
    rows = [{"prompt_index": i, "sample": 0, "response": "The answer is 7.", "score": float(scores[i]),
             "length_tokens": int(lengths[i]), "length_words": int(lengths[i] // 2),
             "kl_seq": float(kl[i] + rng.normal(0, 0.1)), "kl_per_token": float(kl[i] / lengths[i]),
             "kl_exact": float(kl[i]), "logp_policy": -10.0, "logp_sft": -11.0} for i in range(n)]
    with open(os.path.join(d, "eval", "samples.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    summary = {"status": "ok", "scorer": "embedded", "num_prompts": n, "num_samples": n,
               "settings": {"max_new_tokens": 64, "temperature": 1.0},
               "score_mean": score, "score_median": score, "win_rate_vs_chosen": score / 2,
               "win_rate_vs_sft": 0.4 + score / 4, "kl_seq_mean": float(kl.mean()), "kl_exact_mean": float(kl.mean()),
               "kl_per_token_mean": float((kl / lengths).mean()), "length_tokens_mean": float(lengths.mean()),
               "length_tokens_p90": float(np.percentile(lengths, 90)), "length_words_mean": float(lengths.mean() / 2),
               "sft_score_mean": 0.45}
    with open(os.path.join(d, "eval", "summary.json"), "w") as f:
        json.dump(summary, f)


@pytest.fixture
def runs_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = str(tmp_path)
    for method, grid in GRID.items():
        for i, (hp, score) in enumerate(grid):
            write_run(root, os.path.join(method, f"run{i}"), method, hp, score, rng)
    # failures: run.json status failed; no evaluation; an unreadable summary
    write_run(root, "dpo/diverged", "dpo", {"beta": 1.0}, 0.0, rng, eval_=False)
    with open(os.path.join(root, "dpo/diverged/run.json")) as f:
        run = json.load(f)
    run.update(status="failed", error="loss is NaN at step 40")
    with open(os.path.join(root, "dpo/diverged/run.json"), "w") as f:
        json.dump(run, f)
    write_run(root, "simpo/crashed", "simpo", {"beta": 2.0, "gamma": 2.0}, 0.0, rng, eval_=False)
    write_run(root, "ln_dpo/broken", "ln_dpo", {"beta": 4.0}, 0.5, rng)
    with open(os.path.join(root, "ln_dpo/broken/eval/summary.json"), "w") as f:
        f.write("{not json")
    # an SFT workdir is not a compared run
    os.makedirs(os.path.join(root, "sft-embedded"))
    with open(os.path.join(root, "sft-embedded", "run.json"), "w") as f:
        json.dump({"stage": "sft", "method": "nll", "loss": {}}, f)
    return root


def test_report_builds_with_figures_and_failed_runs(runs_dir):
    result = build_report(runs_dir)
    assert result["ok"] == 9
    assert sorted(result["failed"]) == ["dpo/diverged", "ln_dpo/broken", "simpo/crashed"]
    for name in FIGURES:
        path = os.path.join(runs_dir, "figures", name)
        assert os.path.getsize(path) > 2000, name
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    methods = {row["method"]: row for row in result["methods"]}
    assert [row["method"] for row in result["methods"]] == ["dpo", "ln_dpo", "simpo"]
    for method, grid in GRID.items():
        scores = np.asarray([s for _, s in grid])
        row = methods[method]
        assert row["runs"] == 3
        assert row["score_best"] == pytest.approx(scores.max())
        assert row["score_mean"] == pytest.approx(scores.mean())
        assert row["score_std"] == pytest.approx(scores.std())
        assert row["score_median"] == pytest.approx(np.median(scores))
        assert row["score_q1"] == pytest.approx(np.percentile(scores, 25))
        assert row["win_rate_vs_chosen"] == pytest.approx(scores.mean() / 2)
    assert methods["ln_dpo"]["best_run"] == os.path.join("ln_dpo", "run1")

    md = open(os.path.join(runs_dir, "report.md"), encoding="utf-8").read()
    html = open(os.path.join(runs_dir, "report.html"), encoding="utf-8").read()
    for text in (md, html):
        assert "LN-DPO" in text and "SimPO" in text and "DPO" in text
        assert "loss is NaN at step 40" in text and "no eval/summary.json" in text and "unreadable" in text
        assert "sft-embedded" in text
        for name in FIGURES:
            assert f"figures/{name}" in text
    assert "| 0.710 |" in md  # LN-DPO's best score


def test_report_cli_and_empty_dir(runs_dir, tmp_path_factory, capsys):
    assert main([runs_dir]) == 0
    assert "9 run(s), 3 failed" in capsys.readouterr().out
    empty = str(tmp_path_factory.mktemp("empty"))
    result = build_report(empty)
    assert result["ok"] == 0 and result["failed"] == []
    for name in FIGURES:
        assert os.path.getsize(os.path.join(empty, "figures", name)) > 0
    assert main([os.path.join(empty, "missing")]) == 2
