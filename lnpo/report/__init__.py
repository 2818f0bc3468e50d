"""Aggregate evaluated runs into a report: ``python -m lnpo.report DIR``.

Reads every run under ``DIR`` (:func:`lnpo.report.runs.collect_runs`), groups them into
grid points (a method's hyperparameters; its runs are the seeds) and writes
``DIR/report.md``, ``DIR/report.html`` and the study's nine figures under ``DIR/figures/``
(:data:`FIGURES`, :mod:`lnpo.report.figures`). Tables: the study's claims, each with its
measurement, value, 95% interval across seeds and verdict (:mod:`lnpo.report.claims`); the
task's targets (each method's best grid point against the SFT model); every grid point
(mean and 95% interval across seeds); per method over its grid; every run; failed runs.
"""

from __future__ import annotations

import argparse
import html
import json
import os

from lnpo.errors import InputNotFound
from lnpo.report import tables
from lnpo.report.claims import EQUIVALENCE_MARGIN, study_claims, task_targets
from lnpo.report.figures import FIGURES, write_figures
from lnpo.report.runs import METHOD_LABELS, collect_runs, grid_points

__all__ = ["FIGURES", "METHOD_LABELS", "build_report", "collect_runs", "main"]

_NOTES = ("Intervals are Student-t 95% intervals across seeds (Welch's for differences). A method's best grid "
          "point has the highest mean score across seeds (chosen on the same seeds). Win rates count ties as "
          "half a win. KL exact sums the full-vocabulary KL(policy || SFT) over each sample's positions; KL per "
          "token divides each sample's log-ratio by its token count.")


def _sections(runs: dict, points) -> list[tuple[str, list[str], list[list[str]], str]]:
    """``(title, header, rows, note)`` of every table, in order."""
    ok = runs["ok"]
    mtable = tables.method_table(ok)
    mt, mm, rr = tables.table_rows(ok, mtable)
    claims_note = (f"Verdict rules (lnpo.report.claims): a directional claim is confirmed when its interval lies "
                   f"on the claimed side of 0 and not confirmed when it lies on the other side; 'alike' needs the "
                   f"interval inside +-{EQUIVALENCE_MARGIN}; otherwise inconclusive.")
    failed = [[r["name"], tables.label(r.get("method", "?")), tables.hp_str(r.get("hparams") or {}), r["reason"]]
              for r in runs["failed"]]
    sections = [
        ("The study's claims", tables.CLAIM_HEADER, tables.claim_rows(study_claims(points)), claims_note),
        ("Task targets: each method's best grid point against the SFT model", tables.TARGET_HEADER,
         tables.target_rows(task_targets(points)), ""),
        ("Grid points (mean [95% interval] across seeds)", tables.POINT_HEADER, tables.point_rows(points), _NOTES),
        ("Score across each method's runs", [h for _, h in tables.METHOD_COLS], mt, ""),
        ("Win rates, length and KL (mean over each method's runs)", [h for _, h in tables.METRIC_COLS], mm, ""),
        ("Runs", ["run", "method", "hyperparameters", "lr"] + [h for _, h in tables.RUN_COLS], rr, ""),
        ("Failed runs", ["run", "method", "hyperparameters", "reason"], failed, ""),
    ]
    if runs["other"]:
        sections.append(("Not compared", ["run", "reason"], [[r["name"], r["reason"]] for r in runs["other"]], ""))
    return sections


def _intro(root: str, runs: dict) -> str:
    ok = runs["ok"]
    scorer = next((r["summary"].get("scorer") for r in ok if r["summary"].get("scorer")), None)
    settings = next((r["summary"].get("settings") for r in ok if r["summary"].get("settings")), None)
    return (f"{len(ok)} evaluated run(s), {len(runs['failed'])} failed, under `{root}`."
            + (f" Scorer: `{scorer}`." if scorer else "") + (f" Sampling: {json.dumps(settings)}." if settings else ""))


def _markdown(intro: str, sections) -> str:
    md = ["# lnpo report", "", intro, ""]
    for title, header, rows, note in sections:
        md += [f"## {title}", "", tables.md_table(header, rows) if rows else "none", ""]
        md += [note, ""] if note else []
    md += ["## Figures", ""]
    for name, title in FIGURES.items():
        md += [f"### {name.removesuffix('.png')}: {title}", "", f"![{title}](figures/{name})", ""]
    return "\n".join(md)


def _html(intro: str, sections) -> str:
    css = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}"
           "td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:0.5em 0}")
    head = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>lnpo report</title><style>{css}</style>"
            "</head><body><h1>lnpo report</h1>")
    parts = [head, f"<p>{html.escape(intro)}</p>"]
    for title, header, rows, note in sections:
        parts += [f"<h2>{html.escape(title)}</h2>", tables.html_table(header, rows) if rows else "<p>none</p>"]
        parts += [f"<p>{html.escape(note)}</p>"] if note else []
    parts.append("<h2>Figures</h2>")
    for name, title in FIGURES.items():
        parts.append(f"<h3>{html.escape(name.removesuffix('.png'))}: {html.escape(title)}</h3>"
                     f"<img src='figures/{html.escape(name)}' alt='{html.escape(title)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(root: str) -> dict:
    """Collect the runs under ``root`` and write report.md, report.html and figures/.

    Returns ``{"ok": n, "failed": [names], "markdown": path, "html": path, "figures": {file: path},
    "methods": per-method rows, "claims": claim rows, "targets": target rows}``.
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise InputNotFound(f"{root}: no such directory")
    runs = collect_runs(root)
    points = grid_points(runs["ok"])
    fig_paths = write_figures(runs["ok"], points, os.path.join(root, "figures"))
    intro, sections = _intro(root, runs), _sections(runs, points)
    paths = {"markdown": os.path.join(root, "report.md"), "html": os.path.join(root, "report.html")}
    for key, text in (("markdown", _markdown(intro, sections)), ("html", _html(intro, sections))):
        with open(paths[key], "w", encoding="utf-8") as f:
            f.write(text)
    return {"ok": len(runs["ok"]), "failed": [r["name"] for r in runs["failed"]], **paths, "figures": fig_paths,
            "methods": tables.method_table(runs["ok"]), "claims": study_claims(points),
            "targets": task_targets(points)}


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
