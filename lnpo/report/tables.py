"""The report's tables: per method, per grid point (mean and 95% interval across seeds), per run,
the task's targets and the study's claims; rendered to Markdown and HTML."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lnpo.report.runs import GridPoint, label, methods_of, num, values

__all__ = ["label"]


def hp_str(hp: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(hp.items()))


def method_table(runs: Sequence[dict]) -> list[dict]:
    """One row per method: the grid statistics of ``score_mean`` and the means of the other metrics."""
    rows = []
    for m in methods_of(runs):
        mr = [r for r in runs if r["method"] == m]
        s = values(mr, "score_mean")
        row: dict[str, Any] = {"method": m, "runs": len(mr)}
        if s.size:
            best = max((r for r in mr if num(r["summary"].get("score_mean")) is not None),
                       key=lambda r: r["summary"]["score_mean"])
            q1, med, q3 = np.percentile(s, [25, 50, 75])
            row.update(score_best=float(s.max()), best_run=best["name"], score_mean=float(s.mean()),
                       score_std=float(s.std()), score_min=float(s.min()), score_q1=float(q1),
                       score_median=float(med), score_q3=float(q3), score_max=float(s.max()))
        for key in ("win_rate_vs_chosen", "win_rate_vs_sft", "length_tokens_mean", "length_words_mean",
                    "kl_seq_mean", "kl_per_token_mean", "kl_exact_mean"):
            v = values(mr, key)
            row[key] = float(v.mean()) if v.size else None
            if key.startswith("win_rate"):
                row[key + "_best"] = float(v.max()) if v.size else None
        rows.append(row)
    return rows


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "-" if not math.isfinite(float(x)) else f"{float(x):.{digits}f}"
    return str(x)


METHOD_COLS = [("method", "method"), ("runs", "runs"), ("score_best", "best score"), ("best_run", "best run"),
                ("score_mean", "mean"), ("score_std", "std"), ("score_min", "min"), ("score_q1", "Q1"),
                ("score_median", "median"), ("score_q3", "Q3"), ("score_max", "max")]
METRIC_COLS = [("method", "method"), ("win_rate_vs_chosen", "win vs chosen (mean)"),
                ("win_rate_vs_chosen_best", "win vs chosen (best)"), ("win_rate_vs_sft", "win vs SFT (mean)"),
                ("win_rate_vs_sft_best", "win vs SFT (best)"), ("length_tokens_mean", "length (tokens)"),
                ("length_words_mean", "length (words)"), ("kl_seq_mean", "KL seq (MC)"),
                ("kl_per_token_mean", "KL per token"), ("kl_exact_mean", "KL exact")]
RUN_COLS = [("score_mean", "score mean"), ("score_median", "score median"), ("win_rate_vs_chosen", "win vs chosen"),
             ("win_rate_vs_sft", "win vs SFT"), ("length_tokens_mean", "len tok"), ("length_tokens_p90", "len tok p90"),
             ("length_words_mean", "len words"), ("kl_seq_mean", "KL seq"), ("kl_per_token_mean", "KL/token"),
             ("kl_exact_mean", "KL exact")]


def table_rows(runs, methods_table):
    mt = [[(label(r[k]) if k == "method" else _fmt(r.get(k))) for k, _ in METHOD_COLS] for r in methods_table]
    mm = [[(label(r[k]) if k == "method" else _fmt(r.get(k))) for k, _ in METRIC_COLS] for r in methods_table]
    rr = []
    for r in sorted(runs, key=lambda r: (methods_of(runs).index(r["method"]), r["name"])):
        rr.append([r["name"], label(r["method"]), hp_str(r["hparams"]), f"{r['lr']:g}" if num(r["lr"]) is not None
                   else "-"] + [_fmt(r["summary"].get(k)) for k, _ in RUN_COLS])
    return mt, mm, rr


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ci(stat) -> str:
    """``mean [lo, hi]``, or the mean alone when there is no interval."""
    m, lo, hi = stat
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    return _fmt(m) if math.isnan(lo) else f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]"


POINT_COLS = [("score_mean", "score"), ("win_rate_vs_sft", "win vs SFT"), ("length_tokens_mean", "length (tokens)"),
              ("kl_exact_mean", "KL exact"), ("kl_per_token_mean", "KL per token")]


def point_rows(points: Sequence[GridPoint]) -> list[list[str]]:
    """One row per grid point: its seeds and, per :data:`POINT_COLS`, ``mean [95% interval]`` across seeds."""
    return [[p.name, str(len(p.runs))] + [_ci(p.stat(k)) for k, _ in POINT_COLS] for p in points]


def claim_rows(claims: Sequence[dict]) -> list[list[str]]:
    return [[c["claim"], c["measurement"], _ci((c["value"], c["lo"], c["hi"])), f"**{c['verdict']}**"]
            for c in claims]


def target_rows(targets: Sequence[dict]) -> list[list[str]]:
    return [[label(t["method"]), t["point"], str(t["seeds"]), _ci(t["score"]), _ci(t["sft_score"]), _ci(t["delta"]),
             _ci(t["win_rate_vs_sft"]), t["beats_sft"], t["wins_majority"]] for t in targets]


CLAIM_HEADER = ["claim", "measurement", "value [95% interval]", "verdict"]
TARGET_HEADER = ["method", "best grid point", "seeds", "score", "SFT score", "score - SFT", "win rate vs SFT",
                 "beats SFT", "wins > 50%"]
POINT_HEADER = ["grid point", "seeds"] + [h for _, h in POINT_COLS]
