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


def write_run(root, name, method, hparams, score, rng, *, eval_=True, seed=0, extra=None):
    d = os.path.join(root, name)
    os.makedirs(os.path.join(d, "eval"), exist_ok=True)
    with open(os.path.join(d, "run.json"), "w") as f:
        json.dump({"name": name, "stage": "po", "method": method, "loss": {"name": method, **hparams}, "lr": 1e-5,
                   "seed": seed, "sft_path": "/sft", "eval_prompts": "/ood.jsonl", "scorer": "embedded",
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
             "kl_exact": float(kl[i]), "logp_policy": -10.0, "logp_sft": -11.0, "sft_score": 0.45,
             "sft_length_tokens": 20} for i in range(n)]
    with open(os.path.join(d, "eval", "samples.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    summary = {"status": "ok", "scorer": "embedded", "num_prompts": n, "num_samples": n,
               "settings": {"max_new_tokens": 64, "temperature": 1.0},
               "score_mean": score, "score_median": score, "win_rate_vs_chosen": score / 2,
               "win_rate_vs_sft": 0.4 + score / 4, "kl_seq_mean": float(kl.mean()), "kl_exact_mean": float(kl.mean()),
               "kl_per_token_mean": float((kl / lengths).mean()), "length_tokens_mean": float(lengths.mean()),
               "length_tokens_p90": float(np.percentile(lengths, 90)), "length_words_mean": float(lengths.mean() / 2),
               "sft_score_mean": 0.45, **(extra or {})}
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


# ----------------------------------------------------------------------------- seeds, intervals, claims


def test_t_quantile_and_intervals_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    from lnpo.report.runs import diff_ci, mean_ci, t_quantile

    for df in (1, 2, 5, 29, 30, 31, 60, 200):
        assert t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3)
    x = np.asarray([0.61, 0.65, 0.58, 0.70])
    m, lo, hi = mean_ci(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (m, lo, hi) == pytest.approx((x.mean(), *ref), abs=1e-3)
    a, b = np.asarray([0.7, 0.72, 0.69]), np.asarray([0.6, 0.66, 0.61, 0.58])
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    d, lo, hi = diff_ci(a, b)
    assert d == pytest.approx(a.mean() - b.mean())
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=5e-3)  # df rounded to an integer
    assert np.isnan(mean_ci([0.5])[1]) and np.isnan(diff_ci([0.5], [0.4, 0.3])[1])


SEEDS = (0, 1, 2)


def _sweep(root, spec):
    """spec: method -> [(hparams, {metric: per-seed list})]; one run per grid point and seed."""
    rng = np.random.default_rng(1)
    for method, grid in spec.items():
        for i, (hp, metrics) in enumerate(grid):
            for seed in SEEDS:
                extra = {k: v[seed] for k, v in metrics.items()}
                extra.setdefault("sft_length_tokens_mean", 20.0)
                write_run(root, f"{method}-{i}-seed{seed}", method, hp, extra["score_mean"], rng, seed=seed,
                          extra=extra)


def _point(score, length, kl, win=0.6, jitter=(0.0, 0.004, -0.004)):
    return {"score_mean": [score + j for j in jitter], "length_tokens_mean": [length + 10 * j for j in jitter],
            "kl_exact_mean": [kl + j for j in jitter], "win_rate_vs_sft": [win + j for j in jitter]}


def test_claims_table_on_a_synthetic_sweep_where_the_study_holds(tmp_path):
    from lnpo.report.claims import CONFIRMED

    _sweep(str(tmp_path), {
        "dpo": [({"beta": 0.01}, _point(0.40, 60, 2.0)), ({"beta": 0.1}, _point(0.55, 50, 1.0)),
                ({"beta": 0.5}, _point(0.70, 45, 0.2))],
        "ln_dpo": [({"beta": 0.5}, _point(0.66, 30, 0.6)), ({"beta": 1.0}, _point(0.70, 25, 0.5)),
                   ({"beta": 5.0}, _point(0.68, 24, 0.4))],
        "simpo": [({"beta": 2.0, "gamma": 0.5}, _point(0.70, 28, 0.8)),
                  ({"beta": 2.0, "gamma": 1.5}, _point(0.50, 30, 1.0))],
    })
    result = build_report(str(tmp_path))
    assert result["ok"] == 24
    verdicts = {c["claim"]: c["verdict"] for c in result["claims"]}
    assert verdicts == {
        "At their best, DPO, LN-DPO and SimPO perform alike": CONFIRMED,
        "Away from their best, the methods diverge": CONFIRMED,
        "DPO's answers are long": CONFIRMED,
        "DPO stays closer to the SFT model than LN-DPO": CONFIRMED,
        "DPO stays closer to the SFT model than SimPO": CONFIRMED,
        "LN-DPO gives shorter answers than DPO": CONFIRMED,
        "... of equal quality": CONFIRMED,
        "LN-DPO is steadier across beta than DPO": CONFIRMED,
    }
    shorter = next(c for c in result["claims"] if c["claim"] == "LN-DPO gives shorter answers than DPO")
    assert shorter["value"] == pytest.approx(25 - 45)
    steadier = next(c for c in result["claims"] if c["claim"].startswith("LN-DPO is steadier"))
    jitter = (0.0, 0.004, -0.004)
    ln_sd = [np.std([0.66 + j, 0.70 + j, 0.68 + j], ddof=1) for j in jitter]
    dpo_sd = [np.std([0.40 + j, 0.55 + j, 0.70 + j], ddof=1) for j in jitter]
    assert steadier["value"] == pytest.approx(np.mean(ln_sd) - np.mean(dpo_sd))
    targets = {t["method"]: t for t in result["targets"]}
    assert targets["dpo"]["point"] == "DPO beta=0.5, lr=1e-05" and targets["dpo"]["seeds"] == 3
    assert targets["dpo"]["delta"][0] == pytest.approx(0.70 - 0.45)
    assert targets["dpo"]["beats_sft"] == CONFIRMED and targets["dpo"]["wins_majority"] == CONFIRMED
    md = open(os.path.join(str(tmp_path), "report.md"), encoding="utf-8").read()
    assert "## The study's claims" in md and "**confirmed**" in md
    m, lo, hi = (0.70, *(0.70 + np.array([-1, 1]) * 4.303 * np.std([0, 0.004, -0.004], ddof=1) / np.sqrt(3)))
    assert f"{m:.3f} [{lo:.3f}, {hi:.3f}]" in md  # a grid point's score, mean [95% interval]


def test_claims_not_confirmed_when_lndpo_is_longer_and_worse(tmp_path):
    from lnpo.report.claims import INCONCLUSIVE, NOT_CONFIRMED

    _sweep(str(tmp_path), {
        "dpo": [({"beta": 0.1}, _point(0.70, 15, 1.0)), ({"beta": 0.5}, _point(0.69, 14, 0.5))],
        "ln_dpo": [({"beta": 1.0}, _point(0.55, 60, 0.4, jitter=(0.0, 0.03, -0.03))),
                   ({"beta": 5.0}, _point(0.30, 70, 0.3, jitter=(0.0, 0.05, -0.05)))],
    })
    verdicts = {c["claim"]: c["verdict"] for c in build_report(str(tmp_path))["claims"]}
    assert verdicts["LN-DPO gives shorter answers than DPO"] == NOT_CONFIRMED
    assert verdicts["... of equal quality"] == NOT_CONFIRMED
    assert verdicts["LN-DPO is steadier across beta than DPO"] == NOT_CONFIRMED
    assert verdicts["DPO stays closer to the SFT model than LN-DPO"] == NOT_CONFIRMED
    assert verdicts["At their best, DPO, LN-DPO and SimPO perform alike"] == NOT_CONFIRMED
    assert verdicts["DPO's answers are long"] == NOT_CONFIRMED  # 15 tokens against the SFT model's 20
    assert INCONCLUSIVE not in verdicts.values()


def test_write_figures_has_no_function_over_80_lines():
    import ast
    import inspect

    import lnpo.report.figures as figures

    tree = ast.parse(inspect.getsource(figures))
    lengths = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert max(lengths.values()) <= 80, lengths
