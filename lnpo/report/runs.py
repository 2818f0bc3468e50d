"""The runs of a report: reading run directories, grouping them into grid points, intervals across seeds.

Every directory under the root (the root included) holding a ``run.json`` is a run (its
subdirectories are not searched further). A run is *evaluated* when ``eval/summary.json``
exists with ``"status": "ok"``; it is *failed* when its ``run.json`` says ``"status":
"failed"``, or its summary is missing or unreadable. Runs of the ``sft`` and ``rm`` stages
are listed as not compared.

A *grid point* is one method with one set of hyperparameters and learning rate; its runs
differ only in ``seed``. Intervals across seeds are Student-t 95% intervals
(:func:`mean_ci`, and :func:`diff_ci` for a difference of two groups, Welch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lnpo import rundir

METHOD_LABELS = {"dpo": "DPO", "ln_dpo": "LN-DPO", "simpo": "SimPO", "ipo": "IPO", "rdpo": "R-DPO",
                 "hinge": "Hinge", "robust": "rDPO"}
_PREFERRED_ORDER = ("dpo", "ln_dpo", "simpo")


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str) -> list[dict]:
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


def num(x) -> float | None:
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
            run = read_json(rundir.run_json(d))
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
            summary = read_json(spath)
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
        entry["samples"] = read_jsonl(rundir.samples_path(rundir.eval_dir(d)))
        out["ok"].append(entry)
    return out


def methods_of(runs: Sequence[dict]) -> list[str]:
    """The methods present, DPO, LN-DPO, SimPO first."""
    present = sorted({r["method"] for r in runs})
    return [m for m in _PREFERRED_ORDER if m in present] + [m for m in present if m not in _PREFERRED_ORDER]


def values(runs: Sequence[dict], key: str) -> np.ndarray:
    """float64: the runs' finite ``summary[key]`` values."""
    vals = [num(r["summary"].get(key)) for r in runs]
    return np.asarray([v for v in vals if v is not None], np.float64)


def pooled(runs: Sequence[dict], key: str) -> np.ndarray:
    """float64: the finite per-sample ``key`` values of every run's samples."""
    vals = [num(s.get(key)) for r in runs for s in r["samples"]]
    return np.asarray([v for v in vals if v is not None], np.float64)


# ----------------------------------------------------------------------------- intervals


_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` >= 1 degrees of freedom: the table value (3 decimals) up
    to 30, beyond it the Cornish-Fisher expansion ``z + (z^3 + z) / 4df + (5z^5 + 16z^3 + 3z) / 96df^2``."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(x) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: ``mean -+ t_{0.975, n-1} * s / sqrt(n)``; lo = hi = nan below two values."""
    x = np.asarray(x, np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    half = t_quantile(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return m, m - half, m + half


def diff_ci(a, b) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), lo, hi)``: Welch's 95% interval (Welch-Satterthwaite degrees of freedom)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan, math.nan
    d = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return d, math.nan, math.nan
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0.0:
        return d, d, d
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = t_quantile(max(1, round(df))) * se
    return d, d - half, d + half


# ----------------------------------------------------------------------------- grid points


@dataclasses.dataclass
class GridPoint:
    """One method's hyperparameters and learning rate; ``runs`` are its seeds."""

    method: str
    hparams: dict
    lr: float | None
    runs: list[dict]

    @property
    def name(self) -> str:
        hp = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                       for k, v in sorted(self.hparams.items()))
        return f"{label(self.method)} {hp}" + (f", lr={self.lr:g}" if self.lr is not None else "")

    def per_seed(self, key: str) -> np.ndarray:
        """float64 ``[seeds]``: ``summary[key]`` of each run (the finite ones)."""
        return values(self.runs, key)

    def by_seed(self, key: str) -> dict[Any, float]:
        """``{seed: summary[key]}`` (finite values only)."""
        out = {}
        for r in self.runs:
            v = num(r["summary"].get(key))
            if v is not None:
                out[r["run"].get("seed", r["name"])] = v
        return out

    def stat(self, key: str) -> tuple[float, float, float]:
        """``(mean, lo, hi)`` of ``summary[key]`` across seeds (:func:`mean_ci`)."""
        return mean_ci(self.per_seed(key))


def grid_points(runs: Sequence[dict]) -> list[GridPoint]:
    """The evaluated runs grouped by (method, hyperparameters, lr), in method order then hyperparameters."""
    groups: dict[tuple, GridPoint] = {}
    for r in runs:
        hp = {k: v for k, v in r["hparams"].items()}
        key = (r["method"], json.dumps(hp, sort_keys=True, default=str), num(r["lr"]))
        if key not in groups:
            groups[key] = GridPoint(r["method"], hp, num(r["lr"]), [])
        groups[key].runs.append(r)
    order = methods_of(runs)
    return sorted(groups.values(), key=lambda p: (order.index(p.method), sorted((k, str(v)) for k, v in
                                                                                 p.hparams.items()), p.lr or 0))


def best_point(points: Sequence[GridPoint], method: str, key: str = "score_mean") -> GridPoint | None:
    """The ``method`` grid point with the highest mean ``key`` across seeds (None if it has none)."""
    cands = [p for p in points if p.method == method and p.per_seed(key).size]
    return max(cands, key=lambda p: p.stat(key)[0]) if cands else None
