"""The study's claims, each tested by one measurement across seeds, and the task's targets.

Each claim of "A Practical Analysis of Human Alignment with *PO" gets a measurement on the
sweep's grid points (:class:`lnpo.report.runs.GridPoint`; a method's *best* point is the one
with the highest mean score across seeds), its value with a 95% interval across seeds
(Welch's interval for a difference of two groups of seeds) and a verdict:

- a directional claim ("A is shorter than B") is *confirmed* when the interval lies on the
  claimed side of 0, *not confirmed* when it lies on the other side, *inconclusive* otherwise;
- an equivalence claim ("A and B perform alike") is *confirmed* when the interval lies inside
  ``(-EQUIVALENCE_MARGIN, +EQUIVALENCE_MARGIN)`` (score units), *not confirmed* when it lies
  wholly outside it, *inconclusive* otherwise; "they diverge" is the reverse.

The best points are chosen on the same seeds that measure them, which favours the best
point a little; the verdict rules and the margin were fixed before any v2 sweep ran.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from lnpo.report.runs import GridPoint, best_point, diff_ci, label, mean_ci

#: Score difference (the scorer's units, in [0, 1]) below which two methods count as alike.
EQUIVALENCE_MARGIN = 0.05
CONFIRMED, NOT_CONFIRMED, INCONCLUSIVE = "confirmed", "not confirmed", "inconclusive"


def directional(ci: tuple[float, float, float], sign: int) -> str:
    """Verdict on "the difference has sign ``sign``" (+1 or -1) from its ``(value, lo, hi)``."""
    _, lo, hi = ci
    if math.isnan(lo):
        return INCONCLUSIVE
    if (lo > 0 and sign > 0) or (hi < 0 and sign < 0):
        return CONFIRMED
    if (lo > 0 and sign < 0) or (hi < 0 and sign > 0):
        return NOT_CONFIRMED
    return INCONCLUSIVE


def alike(ci: tuple[float, float, float], margin: float = EQUIVALENCE_MARGIN) -> str:
    """Verdict on "the difference is within +-margin" from its ``(value, lo, hi)``."""
    _, lo, hi = ci
    if math.isnan(lo):
        return INCONCLUSIVE
    if -margin < lo and hi < margin:
        return CONFIRMED
    if lo >= margin or hi <= -margin:
        return NOT_CONFIRMED
    return INCONCLUSIVE


def _claim(claim: str, measurement: str, ci, verdict: str) -> dict:
    return {"claim": claim, "measurement": measurement, "value": ci[0], "lo": ci[1], "hi": ci[2], "verdict": verdict}


def _seedwise(points: Sequence[GridPoint], key: str, reduce) -> np.ndarray:
    """Per seed, ``reduce`` over ``points`` of ``summary[key]`` (seeds missing at some point are left out)."""
    by_seed = [p.by_seed(key) for p in points]
    seeds = set.intersection(*(set(d) for d in by_seed)) if by_seed else set()
    return np.asarray([reduce([d[s] for d in by_seed]) for s in sorted(seeds, key=str)], np.float64)


def _best_pairs(points, methods):
    best = {m: best_point(points, m) for m in methods}
    return {m: p for m, p in best.items() if p is not None}


def _widest(pairs: list[tuple[str, tuple]]) -> tuple[str, tuple]:
    return max(pairs, key=lambda x: abs(x[1][0]) if not math.isnan(x[1][0]) else -1.0)


def _alike_claim(pairs: list[tuple[str, tuple]], claim: str, measurement: str, *, claim_is_alike: bool) -> dict:
    """A claim about pairwise differences (``pairs``: name, interval), shown by the widest pair
    (``{name}`` in ``measurement``). Every pair alike confirms "alike" and refutes "diverge"; one pair
    surely apart does the opposite; anything else is inconclusive."""
    name, ci = _widest(pairs)
    verdicts = [alike(c) for _, c in pairs]
    all_alike, one_apart = all(v == CONFIRMED for v in verdicts), NOT_CONFIRMED in verdicts
    if one_apart:
        verdict = NOT_CONFIRMED if claim_is_alike else CONFIRMED
    elif all_alike:
        verdict = CONFIRMED if claim_is_alike else NOT_CONFIRMED
    else:
        verdict = INCONCLUSIVE
    return _claim(claim, measurement.format(name=name), ci, verdict)


def study_claims(points: Sequence[GridPoint]) -> list[dict]:
    """The claims table's rows: ``claim``, ``measurement``, ``value``, ``lo``, ``hi``, ``verdict``."""
    methods = [m for m in ("dpo", "ln_dpo", "simpo") if any(p.method == m for p in points)]
    best = _best_pairs(points, methods)
    rows = []
    pairs = [(f"{label(a)} - {label(b)}", diff_ci(best[a].per_seed("score_mean"), best[b].per_seed("score_mean")))
             for a, b in combinations([m for m in methods if m in best], 2)]
    if pairs:
        rows.append(_alike_claim(pairs, "At their best, DPO, LN-DPO and SimPO perform alike",
                                 "score difference of the best grid points, largest pair ({name}); alike = within "
                                 f"+-{EQUIVALENCE_MARGIN} for every pair", claim_is_alike=True))
    rest = {}
    for m in methods:
        others = [p for p in points if p.method == m and p is not best.get(m)]
        if others:
            rest[m] = _seedwise(others, "score_mean", np.mean)
    pairs = [(f"{label(a)} - {label(b)}", diff_ci(rest[a], rest[b])) for a, b in combinations(list(rest), 2)]
    if pairs:
        rows.append(_alike_claim(pairs, "Away from their best, the methods diverge",
                                 "difference of the mean score over each method's other grid points, largest pair "
                                 f"({{name}}); diverge = outside +-{EQUIVALENCE_MARGIN} for some pair",
                                 claim_is_alike=False))
    rows += _dpo_and_lndpo_claims(points, best)
    return rows


def _dpo_and_lndpo_claims(points, best) -> list[dict]:
    rows = []
    dpo, ln = best.get("dpo"), best.get("ln_dpo")
    if dpo is not None:
        ci = diff_ci(dpo.per_seed("length_tokens_mean"), dpo.per_seed("sft_length_tokens_mean"))
        rows.append(_claim("DPO's answers are long", "best DPO point's mean length - the SFT model's (tokens)",
                           ci, directional(ci, +1)))
        for other in ("ln_dpo", "simpo"):
            if other in best:
                ci = diff_ci(dpo.per_seed("kl_exact_mean"), best[other].per_seed("kl_exact_mean"))
                rows.append(_claim(f"DPO stays closer to the SFT model than {label(other)}",
                                   f"KL(policy || SFT) of the best points, DPO - {label(other)} (nats)",
                                   ci, directional(ci, -1)))
    if dpo is not None and ln is not None:
        ci = diff_ci(ln.per_seed("length_tokens_mean"), dpo.per_seed("length_tokens_mean"))
        rows.append(_claim("LN-DPO gives shorter answers than DPO",
                           "mean length of the best points, LN-DPO - DPO (tokens)", ci, directional(ci, -1)))
        ci = diff_ci(ln.per_seed("score_mean"), dpo.per_seed("score_mean"))
        rows.append(_claim("... of equal quality", f"score of the best points, LN-DPO - DPO; equal = within "
                           f"+-{EQUIVALENCE_MARGIN}", ci, alike(ci)))
    spread = {m: _seedwise([p for p in points if p.method == m], "score_mean", lambda v: float(np.std(v, ddof=1)))
              for m in ("dpo", "ln_dpo") if sum(p.method == m for p in points) > 1}
    if len(spread) == 2:
        ci = diff_ci(spread["ln_dpo"], spread["dpo"])
        rows.append(_claim("LN-DPO is steadier across beta than DPO",
                           "standard deviation of the score across the beta grid (per seed), LN-DPO - DPO",
                           ci, directional(ci, -1)))
    return rows


def task_targets(points: Sequence[GridPoint]) -> list[dict]:
    """Per method, its best point against the SFT model: score difference and win rate vs SFT (95% intervals)."""
    rows = []
    for m in ("dpo", "ln_dpo", "simpo"):
        p = best_point(points, m)
        if p is None:
            continue
        delta = p.per_seed("score_mean") - p.per_seed("sft_score_mean") if (
            p.per_seed("score_mean").size == p.per_seed("sft_score_mean").size) else np.zeros(0)
        d = mean_ci(delta)
        w = p.stat("win_rate_vs_sft")
        rows.append({"method": m, "point": p.name, "seeds": len(p.runs), "score": p.stat("score_mean"),
                     "sft_score": p.stat("sft_score_mean"), "delta": d, "win_rate_vs_sft": w,
                     "beats_sft": directional(d, +1), "wins_majority": directional((w[0] - 0.5, w[1] - 0.5,
                                                                                     w[2] - 0.5), +1)})
    return rows
