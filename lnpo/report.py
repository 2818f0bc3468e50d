"""Aggregate evaluated runs into a report: ``python -m lnpo.report DIR``.

Every directory under ``DIR`` (``DIR`` itself included) holding a ``run.json`` is
a run (its subdirectories are not searched further). A run is *evaluated* when
``eval/summary.json`` exists with ``"status": "ok"``; it is *failed* when its
``run.json`` says ``"status": "failed"``, or its summary is missing or
unreadable. Runs of the ``sft`` and ``rm`` stages (``run.json`` ``stage``) are
listed as not compared. Failed runs are listed in the report, never fatal.

Writes ``DIR/report.md``, ``DIR/report.html`` and the figures under
``DIR/figures/`` (PNG, matplotlib Agg):

==============================  ==============================================================
``score_hist.png``              per-sample scores, pooled over each method's grid
``length_hist.png``             per-sample response lengths (tokens, words) per method
``kl_hist.png``                 per-sample exact KL(pi || pi_sft) per method
``kl_per_token_hist.png``       per-sample per-token normalized KL (log-ratio / tokens) per method
``score_vs_beta.png``           run mean score against beta, one panel per method (log x)
``simpo_score_vs_gamma.png``    SimPO run mean score against gamma, coloured by beta
``kl_vs_score.png``             run KL against run mean score, per method
==============================  ==============================================================

Tables (per method, over the method's evaluated runs = its hyperparameter grid):
best / mean / std / min / quartiles / max of the runs' ``score_mean``, and the
mean (and best) of win rates, lengths and KL; then one row per run.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lnpo import rundir
from lnpo.errors import InputNotFound

__all__ = ["METHOD_LABELS", "FIGURES", "build_report", "collect_runs", "main"]

METHOD_LABELS = {"dpo": "DPO", "ln_dpo": "LN-DPO", "simpo": "SimPO", "ipo": "IPO", "rdpo": "R-DPO",
                 "hinge": "Hinge", "robust": "rDPO"}
#: file name -> title of every figure written.
FIGURES = {
    "score_hist.png": "Score distribution per method across the hyperparameter grid",
    "length_hist.png": "Response length per method",
    "kl_hist.png": "KL(policy || SFT) per response",
    "kl_per_token_hist.png": "Per-token normalized KL(policy || SFT)",
    "score_vs_beta.png": "Mean score against beta",
    "simpo_score_vs_gamma.png": "SimPO mean score against gamma",
    "kl_vs_score.png": "KL against mean score per run",
}
_PREFERRED_ORDER = ("dpo", "ln_dpo", "simpo")


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    if not os.path.isfile(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def collect_runs(root: str) -> dict[str, list[dict]]:
    """``{"ok": [...], "failed": [...], "other": [...]}``; each run a dict with ``name``
    (path relative to root), ``dir``, ``run`` (run.json), ``method``, ``hparams``
    (the run.json ``loss`` dict without ``name``), ``lr``, and for ok runs
    ``summary`` and ``samples`` (samples.jsonl rows); failed runs carry ``reason``."""
    out: dict[str, list[dict]] = {"ok": [], "failed": [], "other": []}
    for d, subdirs, files in os.walk(root):
        subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
        if rundir.RUN_JSON not in files:
            continue
        subdirs[:] = []
        name = os.path.relpath(d, root)
        entry: dict[str, Any] = {"name": name, "dir": d}
        try:
            run = _read_json(rundir.run_json(d))
            if not isinstance(run, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            entry.update(run={}, method="?", hparams={}, lr=None, reason=f"unreadable run.json ({e})")
            out["failed"].append(entry)
            continue
        loss = run.get("loss") if isinstance(run.get("loss"), Mapping) else {}
        method = str(run.get("method") or loss.get("name") or "unknown")
        hparams = {k: v for k, v in loss.items() if k != "name"}
        for k in ("beta", "gamma"):
            if k not in hparams and k in run:
                hparams[k] = run[k]
        entry.update(run=run, method=method, hparams=hparams, lr=run.get("lr"))
        if run.get("stage") in ("sft", "rm"):
            entry["reason"] = f"stage {run['stage']} (not a preference-optimization run)"
            out["other"].append(entry)
            continue
        if run.get("status") == "failed":
            entry["reason"] = "run.json status failed" + (f": {run['error']}" if run.get("error") else "")
            out["failed"].append(entry)
            continue
        spath = rundir.eval_summary(d)
        if not os.path.isfile(spath):
            entry["reason"] = "no eval/summary.json"
            out["failed"].append(entry)
            continue
        try:
            summary = _read_json(spath)
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            entry["reason"] = f"unreadable eval/summary.json ({e})"
            out["failed"].append(entry)
            continue
        if summary.get("status", "ok") != "ok":
            entry["reason"] = f"evaluation status {summary.get('status')!r}"
            out["failed"].append(entry)
            continue
        entry["summary"] = summary
        entry["samples"] = _read_jsonl(rundir.samples_path(rundir.eval_dir(d)))
        out["ok"].append(entry)
    return out


def _methods(runs: Sequence[dict]) -> list[str]:
    present = sorted({r["method"] for r in runs})
    return [m for m in _PREFERRED_ORDER if m in present] + [m for m in present if m not in _PREFERRED_ORDER]


def _values(runs: Sequence[dict], key: str) -> np.ndarray:
    vals = [_num(r["summary"].get(key)) for r in runs]
    return np.asarray([v for v in vals if v is not None], np.float64)


def _pooled(runs: Sequence[dict], key: str) -> np.ndarray:
    vals = [_num(s.get(key)) for r in runs for s in r["samples"]]
    return np.asarray([v for v in vals if v is not None], np.float64)


def method_table(runs: Sequence[dict]) -> list[dict]:
    """One row per method: the grid statistics of ``score_mean`` and the means of the other metrics."""
    rows = []
    for m in _methods(runs):
        mr = [r for r in runs if r["method"] == m]
        s = _values(mr, "score_mean")
        row: dict[str, Any] = {"method": m, "runs": len(mr)}
        if s.size:
            best = max((r for r in mr if _num(r["summary"].get("score_mean")) is not None),
                       key=lambda r: r["summary"]["score_mean"])
            q1, med, q3 = np.percentile(s, [25, 50, 75])
            row.update(score_best=float(s.max()), best_run=best["name"], score_mean=float(s.mean()),
                       score_std=float(s.std()), score_min=float(s.min()), score_q1=float(q1),
                       score_median=float(med), score_q3=float(q3), score_max=float(s.max()))
        for key in ("win_rate_vs_chosen", "win_rate_vs_sft", "length_tokens_mean", "length_words_mean",
                    "kl_seq_mean", "kl_per_token_mean", "kl_exact_mean"):
            v = _values(mr, key)
            row[key] = float(v.mean()) if v.size else None
            if key.startswith("win_rate"):
                row[key + "_best"] = float(v.max()) if v.size else None
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- figures


def _hp_str(hp: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(hp.items()))


def _placeholder(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _hist_per_method(ax, runs, methods, key: str, xlabel: str, title: str) -> None:
    data = {m: _pooled([r for r in runs if r["method"] == m], key) for m in methods}
    data = {m: v for m, v in data.items() if v.size}
    if not data:
        _placeholder(ax, f"no per-sample '{key}' values")
    else:
        allv = np.concatenate(list(data.values()))
        lo, hi = float(allv.min()), float(allv.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 31)
        for m, v in data.items():
            ax.hist(v, bins=bins, density=True, histtype="step", linewidth=1.8,
                    label=f"{_label(m)} (n={v.size})")
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)


def write_figures(runs: Sequence[dict], fig_dir: str) -> dict[str, str]:
    """Write every figure of :data:`FIGURES` into ``fig_dir``; returns ``{file: path}``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    os.makedirs(fig_dir, exist_ok=True)
    methods = _methods(runs)
    scorer = next((r["summary"].get("scorer") for r in runs if r["summary"].get("scorer")), None)
    score_unit = f"score ({scorer})" if scorer else "score"
    paths = {}

    def save(fig, name):
        path = os.path.join(fig_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths[name] = path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _hist_per_method(ax, runs, methods, "score", f"per-response {score_unit}", FIGURES["score_hist.png"])
    save(fig, "score_hist.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    _hist_per_method(axes[0], runs, methods, "length_tokens", "response length (tokens)", "Response length (tokens)")
    _hist_per_method(axes[1], runs, methods, "length_words", "response length (words)", "Response length (words)")
    fig.suptitle(FIGURES["length_hist.png"])
    save(fig, "length_hist.png")

    key = "kl_exact" if any(s.get("kl_exact") is not None for r in runs for s in r["samples"]) else "kl_seq"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _hist_per_method(ax, runs, methods, key,
                     "KL(policy || SFT) per response (nats, " + ("exact, summed over positions)" if key == "kl_exact"
                                                              else "log-ratio estimate)"),
                     FIGURES["kl_hist.png"])
    save(fig, "kl_hist.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _hist_per_method(ax, runs, methods, "kl_per_token",
                     "(log pi(y|x) - log pi_sft(y|x)) / |y|  (nats per token)", FIGURES["kl_per_token_hist.png"])
    save(fig, "kl_per_token_hist.png")

    beta_methods = [m for m in methods if any(_num(r["hparams"].get("beta")) for r in runs if r["method"] == m)]
    sft_ref = _values(runs, "sft_score_mean")
    fig, axes = plt.subplots(1, max(1, len(beta_methods)), figsize=(4.5 * max(1, len(beta_methods)), 4.2),
                             sharey=True, squeeze=False)
    if not beta_methods:
        _placeholder(axes[0, 0], "no runs with a beta hyperparameter")
        axes[0, 0].set_xlabel("beta")
        axes[0, 0].set_ylabel(f"mean {score_unit}")
    for ax, m in zip(axes[0], beta_methods):
        pts = [(_num(r["hparams"].get("beta")), _num(r["summary"].get("score_mean")))
               for r in runs if r["method"] == m]
        pts = [(b, s) for b, s in pts if b and b > 0 and s is not None]
        if pts:
            b, s = np.asarray(pts).T
            ax.scatter(b, s, alpha=0.6, label="run")
            ub = np.unique(b)
            ax.plot(ub, [s[b == x].mean() for x in ub], marker="o", color="k", label="mean over other hparams")
            ax.set_xscale("log")
            ax.set_xticks(ub)
            ax.set_xticklabels([f"{v:g}" for v in ub])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if sft_ref.size:
            ax.axhline(float(sft_ref.mean()), color="gray", linestyle="--", label="SFT model")
        ax.set_title(_label(m))
        ax.set_xlabel("beta (log scale)")
        ax.set_ylabel(f"mean {score_unit}")
        ax.legend(fontsize=8)
    fig.suptitle(FIGURES["score_vs_beta.png"])
    save(fig, "score_vs_beta.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [(_num(r["hparams"].get("gamma")), _num(r["hparams"].get("beta")), _num(r["summary"].get("score_mean")))
           for r in runs if r["method"] == "simpo"]
    pts = [p for p in pts if p[0] is not None and p[2] is not None]
    if pts:
        g, b, s = (np.asarray([p[i] if p[i] is not None else np.nan for p in pts], np.float64) for i in range(3))
        for beta in sorted(set(b[~np.isnan(b)].tolist())) or [None]:
            sel = ~np.isnan(b) & (b == beta) if beta is not None else np.ones_like(g, bool)
            order = np.argsort(g[sel])
            ax.plot(g[sel][order], s[sel][order], marker="o", label=f"beta={beta:g}" if beta is not None else "runs")
        if np.isnan(b).any() and not np.isnan(b).all():
            ax.scatter(g[np.isnan(b)], s[np.isnan(b)], label="beta unknown")
        if sft_ref.size:
            ax.axhline(float(sft_ref.mean()), color="gray", linestyle="--", label="SFT model")
        ax.legend(fontsize=8)
    else:
        _placeholder(ax, "no evaluated SimPO runs with gamma")
    ax.set_xlabel("gamma (target reward margin)")
    ax.set_ylabel(f"mean {score_unit}")
    ax.set_title(FIGURES["simpo_score_vs_gamma.png"])
    save(fig, "simpo_score_vs_gamma.png")

    kl_key = "kl_exact_mean" if _values(runs, "kl_exact_mean").size else "kl_seq_mean"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    any_pts = False
    for m in methods:
        pts = [(_num(r["summary"].get(kl_key)), _num(r["summary"].get("score_mean")))
               for r in runs if r["method"] == m]
        pts = [p for p in pts if None not in p]
        if pts:
            k, s = np.asarray(pts).T
            ax.scatter(k, s, label=_label(m), alpha=0.8)
            any_pts = True
    if any_pts:
        ax.legend()
    else:
        _placeholder(ax, "no runs with both KL and score")
    ax.set_xlabel(f"KL(policy || SFT) per response, run mean (nats; {kl_key})")
    ax.set_ylabel(f"mean {score_unit}")
    ax.set_title(FIGURES["kl_vs_score.png"])
    save(fig, "kl_vs_score.png")
    return paths


# ----------------------------------------------------------------------------- documents


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "-" if not math.isfinite(float(x)) else f"{float(x):.{digits}f}"
    return str(x)


_METHOD_COLS = [("method", "method"), ("runs", "runs"), ("score_best", "best score"), ("best_run", "best run"),
                ("score_mean", "mean"), ("score_std", "std"), ("score_min", "min"), ("score_q1", "Q1"),
                ("score_median", "median"), ("score_q3", "Q3"), ("score_max", "max")]
_METRIC_COLS = [("method", "method"), ("win_rate_vs_chosen", "win vs chosen (mean)"),
                ("win_rate_vs_chosen_best", "win vs chosen (best)"), ("win_rate_vs_sft", "win vs SFT (mean)"),
                ("win_rate_vs_sft_best", "win vs SFT (best)"), ("length_tokens_mean", "length (tokens)"),
                ("length_words_mean", "length (words)"), ("kl_seq_mean", "KL seq (MC)"),
                ("kl_per_token_mean", "KL per token"), ("kl_exact_mean", "KL exact")]
_RUN_COLS = [("score_mean", "score mean"), ("score_median", "score median"), ("win_rate_vs_chosen", "win vs chosen"),
             ("win_rate_vs_sft", "win vs SFT"), ("length_tokens_mean", "len tok"), ("length_tokens_p90", "len tok p90"),
             ("length_words_mean", "len words"), ("kl_seq_mean", "KL seq"), ("kl_per_token_mean", "KL/token"),
             ("kl_exact_mean", "KL exact")]


def _table_rows(runs, methods_table):
    mt = [[(_label(r[k]) if k == "method" else _fmt(r.get(k))) for k, _ in _METHOD_COLS] for r in methods_table]
    mm = [[(_label(r[k]) if k == "method" else _fmt(r.get(k))) for k, _ in _METRIC_COLS] for r in methods_table]
    rr = []
    for r in sorted(runs, key=lambda r: (_methods(runs).index(r["method"]), r["name"])):
        rr.append([r["name"], _label(r["method"]), _hp_str(r["hparams"]), f"{r['lr']:g}" if _num(r["lr"]) is not None
                   else "-"] + [_fmt(r["summary"].get(k)) for k, _ in _RUN_COLS])
    return mt, mm, rr


def _md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report(root: str) -> dict:
    """Collect the runs under ``root`` and write report.md, report.html and figures/.

    Returns ``{"ok": n, "failed": [names], "markdown": path, "html": path, "figures": {file: path},
    "methods": method_table rows}``.
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise InputNotFound(f"{root}: no such directory")
    runs = collect_runs(root)
    ok = runs["ok"]
    fig_paths = write_figures(ok, os.path.join(root, "figures"))
    mtable = method_table(ok)
    mt, mm, rr = _table_rows(ok, mtable)
    failed_rows = [[r["name"], _label(r.get("method", "?")), _hp_str(r.get("hparams") or {}), r["reason"]]
                   for r in runs["failed"]]
    other_rows = [[r["name"], r["reason"]] for r in runs["other"]]
    run_header = ["run", "method", "hyperparameters", "lr"] + [h for _, h in _RUN_COLS]
    scorer = next((r["summary"].get("scorer") for r in ok if r["summary"].get("scorer")), None)
    settings = next((r["summary"].get("settings") for r in ok if r["summary"].get("settings")), None)
    intro = (f"{len(ok)} evaluated run(s), {len(runs['failed'])} failed, under `{root}`."
             + (f" Scorer: `{scorer}`." if scorer else "")
             + (f" Sampling: {json.dumps(settings)}." if settings else ""))
    notes = ("Score statistics are over each method's runs (its hyperparameter grid) of the run's mean score. "
             "Win rates count ties as half a win. KL seq is the Monte-Carlo estimate mean(log pi(y|x) - log "
             "pi_sft(y|x)) on policy samples; KL per token divides each sample's log-ratio by its token count; "
             "KL exact sums the full-vocabulary KL over the positions of each sample.")

    md = ["# lnpo report", "", intro, "", "## Score across the hyperparameter grid", "",
          _md_table([h for _, h in _METHOD_COLS], mt) if mt else "_no evaluated runs_", "",
          "## Win rates, length and KL (mean over each method's runs)", "",
          _md_table([h for _, h in _METRIC_COLS], mm) if mm else "_no evaluated runs_", "", notes, "",
          "## Runs", "", _md_table(run_header, rr) if rr else "_no evaluated runs_", "",
          "## Failed runs", "",
          _md_table(["run", "method", "hyperparameters", "reason"], failed_rows) if failed_rows else "none", ""]
    if other_rows:
        md += ["## Not compared", "", _md_table(["run", "reason"], other_rows), ""]
    md += ["## Figures", ""]
    for name, title in FIGURES.items():
        md += [f"### {title}", "", f"![{title}](figures/{name})", ""]
    md_path = os.path.join(root, "report.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("\n".join(md))

    css = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}"
           "td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:0.5em 0}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>lnpo report</title><style>{css}</style>"
             "</head><body><h1>lnpo report</h1>", f"<p>{html.escape(intro)}</p>",
             "<h2>Score across the hyperparameter grid</h2>",
             _html_table([h for _, h in _METHOD_COLS], mt) if mt else "<p>no evaluated runs</p>",
             "<h2>Win rates, length and KL (mean over each method's runs)</h2>",
             _html_table([h for _, h in _METRIC_COLS], mm) if mm else "<p>no evaluated runs</p>",
             f"<p>{html.escape(notes)}</p>", "<h2>Runs</h2>",
             _html_table(run_header, rr) if rr else "<p>no evaluated runs</p>", "<h2>Failed runs</h2>",
             _html_table(["run", "method", "hyperparameters", "reason"], failed_rows) if failed_rows else "<p>none</p>"]
    if other_rows:
        parts += ["<h2>Not compared</h2>", _html_table(["run", "reason"], other_rows)]
    parts.append("<h2>Figures</h2>")
    for name, title in FIGURES.items():
        parts.append(f"<h3>{html.escape(title)}</h3><img src='figures/{html.escape(name)}' alt='{html.escape(title)}'>")
    parts.append("</body></html>")
    html_path = os.path.join(root, "report.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return {"ok": len(ok), "failed": [r["name"] for r in runs["failed"]], "markdown": md_path, "html": html_path,
            "figures": fig_paths, "methods": mtable}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lnpo.report",
                                description="Aggregate evaluated runs under DIR into DIR/report.md and report.html")
    p.add_argument("dir", help="directory holding run directories (each with run.json and eval/summary.json)")
    args = p.parse_args(argv)
    from lnpo.cli import exit_status

    return exit_status("lnpo.report", _report, args.dir)


def _report(directory: str) -> int:
    result = build_report(directory)
    print(f"lnpo.report: {result['ok']} run(s), {len(result['failed'])} failed -> {result['markdown']}, "
          f"{result['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
