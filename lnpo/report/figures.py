"""The study's nine figures (PNG, matplotlib Agg), named as in the study.

==============================  ==================================================================
``performance_hist.png``        per-response score at each method's best grid point (seeds pooled) and the SFT model's
``response_length_dist.png``    response length (tokens) at each method's best grid point and the SFT model's
``kl_dist.png``                 per-response KL(policy || SFT) at each method's best grid point
``dpo_beta.png``                DPO: mean score and mean length against beta (mean and 95% interval across seeds)
``dpo_ln_beta.png``             LN-DPO: the same against its beta
``simpo_beta.png``              SimPO: mean score against beta, one line per gamma
``simpo_gamma.png``             SimPO: mean score against gamma, one line per beta
``kl_vs_score.png``             every grid point's mean KL against its mean score (95% intervals on both axes)
``norm_kl_dist.png``            per-response length-normalized KL (log-ratio / tokens) at each best grid point
==============================  ==================================================================

Where a grid point has several seeds, each plotted point is the mean across seeds with
an error bar of its 95% interval (:func:`lnpo.report.runs.mean_ci`); with one seed, the
bar is absent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from lnpo.report.runs import (
    GridPoint,
    best_point,
    label,
    methods_of,
    num,
    pooled,
    values,
)

#: file name -> title of every figure written.
FIGURES = {
    "performance_hist.png": "Score per response at each method's best grid point",
    "response_length_dist.png": "Response length at each method's best grid point",
    "kl_dist.png": "KL(policy || SFT) per response at each method's best grid point",
    "dpo_beta.png": "DPO across beta",
    "dpo_ln_beta.png": "LN-DPO across beta",
    "simpo_beta.png": "SimPO across beta",
    "simpo_gamma.png": "SimPO across gamma",
    "kl_vs_score.png": "KL against score per grid point",
    "norm_kl_dist.png": "Length-normalized KL per response at each method's best grid point",
}


def _placeholder(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _sft_samples(runs: Sequence[dict], key: str) -> np.ndarray:
    """The SFT model's per-sample ``sft_<key>`` values, from one run (every run scores the same SFT samples)."""
    for r in runs:
        vals = [num(s.get(f"sft_{key}")) for s in r["samples"]]
        vals = [v for v in vals if v is not None]
        if vals:
            return np.asarray(vals, np.float64)
    return np.zeros(0)


def _hist(ax, series: dict[str, np.ndarray], xlabel: str, title: str, log_x: bool = False) -> None:
    series = {k: v for k, v in series.items() if v.size}
    if not series:
        _placeholder(ax, "no per-sample values")
    else:
        allv = np.concatenate(list(series.values()))
        lo, hi = float(allv.min()), float(allv.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.geomspace(max(lo, 1.0), hi, 31) if log_x and lo > 0 else np.linspace(lo, hi, 31)
        for name, v in series.items():
            ax.hist(v, bins=bins, density=True, histtype="step", linewidth=1.8,
                    linestyle="--" if name == "SFT" else "-", label=f"{name} (n={v.size}, mean {v.mean():.3g})")
        if log_x and lo > 0:
            ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)


def _best_series(points, methods, key: str) -> dict[str, np.ndarray]:
    out = {}
    for m in methods:
        p = best_point(points, m)
        if p is not None:
            out[f"{label(m)} best ({', '.join(f'{k}={v:g}' for k, v in sorted(p.hparams.items()))})"] = pooled(p.runs,
                                                                                                               key)
    return out


def _errorbar(ax, xs, stats, **kw):
    """Plot means with 95% intervals; ``stats`` are ``(mean, lo, hi)`` (nan bounds: no bar)."""
    m = np.asarray([s[0] for s in stats])
    lo = np.asarray([s[1] for s in stats])
    hi = np.asarray([s[2] for s in stats])
    err = np.where(np.isnan(lo), 0.0, np.vstack([m - lo, hi - m]))
    ax.errorbar(xs, m, yerr=err, marker="o", capsize=3, **kw)


def _log_x(ax, xs) -> None:
    """A log x axis labelled at the grid's own values."""
    import matplotlib.ticker

    ax.set_xscale("log")
    xs = sorted(set(xs))
    if xs:
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{v:g}" for v in xs])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _sft_line(ax, runs, key: str = "sft_score_mean") -> None:
    ref = values(runs, key)
    if ref.size:
        ax.axhline(float(ref.mean()), color="gray", linestyle="--", label="SFT model")


def _beta_figure(fig, points: Sequence[GridPoint], runs, method: str) -> None:
    """Two panels: mean score and mean length (tokens) against beta, one line per other-hyperparameter setting."""
    axes = fig.subplots(1, 2)
    pts = [p for p in points if p.method == method and num(p.hparams.get("beta"))]
    for ax, key, ylabel, sft_key in ((axes[0], "score_mean", "mean score", "sft_score_mean"),
                                     (axes[1], "length_tokens_mean", "mean length (tokens)",
                                      "sft_length_tokens_mean")):
        if not pts:
            _placeholder(ax, f"no evaluated {label(method)} runs")
        for rest, line in _lines(pts, "beta").items():
            _errorbar(ax, [p.hparams["beta"] for p in line], [p.stat(key) for p in line], label=rest or None)
        _sft_line(ax, runs, sft_key)
        _log_x(ax, [p.hparams["beta"] for p in pts])
        ax.set_xlabel("beta (log scale)")
        ax.set_ylabel(ylabel + " (mean, 95% interval across seeds)")
        ax.legend(fontsize=8)


def _lines(pts: Sequence[GridPoint], axis: str) -> dict[str, list[GridPoint]]:
    """Grid points grouped by their hyperparameters other than ``axis``, each group sorted by ``axis``."""
    lines: dict[str, list[GridPoint]] = {}
    for p in pts:
        rest = ", ".join(f"{k}={v:g}" for k, v in sorted(p.hparams.items()) if k != axis and num(v) is not None)
        lines.setdefault(rest, []).append(p)
    return {k: sorted(v, key=lambda p: p.hparams[axis]) for k, v in lines.items()}


def _simpo_figure(ax, points, runs, axis: str) -> None:
    pts = [p for p in points if p.method == "simpo" and num(p.hparams.get(axis)) is not None]
    if not pts:
        _placeholder(ax, f"no evaluated SimPO runs with {axis}")
    for rest, line in _lines(pts, axis).items():
        _errorbar(ax, [p.hparams[axis] for p in line], [p.stat("score_mean") for p in line], label=rest or None)
    _sft_line(ax, runs)
    if axis == "beta":
        _log_x(ax, [p.hparams["beta"] for p in pts])
    ax.set_xlabel(axis + (" (log scale)" if axis == "beta" else " (target reward margin)"))
    ax.set_ylabel("mean score (mean, 95% interval across seeds)")
    ax.legend(fontsize=8)


def _kl_vs_score(ax, points, runs, methods) -> None:
    kl_key = "kl_exact_mean" if values(runs, "kl_exact_mean").size else "kl_seq_mean"
    for m in methods:
        pts = [p for p in points if p.method == m and p.per_seed(kl_key).size and p.per_seed("score_mean").size]
        if not pts:
            continue
        k = [p.stat(kl_key) for p in pts]
        s = [p.stat("score_mean") for p in pts]
        xerr = np.asarray([[a[0] - a[1], a[2] - a[0]] if not np.isnan(a[1]) else [0, 0] for a in k]).T
        yerr = np.asarray([[a[0] - a[1], a[2] - a[0]] if not np.isnan(a[1]) else [0, 0] for a in s]).T
        ax.errorbar([a[0] for a in k], [a[0] for a in s], xerr=xerr, yerr=yerr, fmt="o", capsize=2, label=label(m))
    if not points:
        _placeholder(ax, "no runs with both KL and score")
    _sft_line(ax, runs)
    ax.set_xlabel(f"KL(policy || SFT) per response, grid point mean (nats; {kl_key})")
    ax.set_ylabel("mean score")
    ax.legend(fontsize=8)


def write_figures(runs: Sequence[dict], points: Sequence[GridPoint], fig_dir: str) -> dict[str, str]:
    """Write every figure of :data:`FIGURES` into ``fig_dir``; returns ``{file: path}``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    os.makedirs(fig_dir, exist_ok=True)
    methods = methods_of(runs)
    kl_key = "kl_exact" if any(s.get("kl_exact") is not None for r in runs for s in r["samples"]) else "kl_seq"
    hists = {
        "performance_hist.png": ("score", "score per response", False),
        "response_length_dist.png": ("length_tokens", "response length (tokens, log scale)", True),
        "kl_dist.png": (kl_key, f"KL(policy || SFT) per response (nats; {kl_key})", False),
        "norm_kl_dist.png": ("kl_per_token", "(log pi(y|x) - log pi_sft(y|x)) / |y| (nats per token)", False),
    }
    paths = {}
    for name, title in FIGURES.items():
        fig = plt.figure(figsize=(11, 4.5) if name in ("dpo_beta.png", "dpo_ln_beta.png") else (7.5, 4.8))
        if name in hists:
            key, xlabel, log_x = hists[name]
            series = _best_series(points, methods, key)
            if key in ("score", "length_tokens"):
                series["SFT"] = _sft_samples(runs, key)
            _hist(fig.subplots(), series, xlabel, title, log_x)
        elif name in ("dpo_beta.png", "dpo_ln_beta.png"):
            _beta_figure(fig, points, runs, "dpo" if name == "dpo_beta.png" else "ln_dpo")
            fig.suptitle(title)
        elif name in ("simpo_beta.png", "simpo_gamma.png"):
            ax = fig.subplots()
            _simpo_figure(ax, points, runs, "beta" if name == "simpo_beta.png" else "gamma")
            ax.set_title(title)
        else:
            ax = fig.subplots()
            _kl_vs_score(ax, points, runs, methods)
            ax.set_title(title)
        path = os.path.join(fig_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths[name] = path
    return paths
