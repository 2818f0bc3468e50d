"""Grid expansion: every method x grid point (``beta``, ``gamma``, ``lr``) x seed of a sweep is one :class:`RunSpec`."""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterable, Sequence

import ml_collections

from lnpo import config_files
from lnpo.errors import SweepError
from lnpo.sweep.overrides import flatten
from lnpo.sweep.spec import RunSpec

#: grid axis -> the run-config field it sets (in run-name order; the seed comes last).
GRID_AXES = {"beta": "loss.beta", "gamma": "loss.gamma", "lr": "optim.lr"}
_METHOD_FIELDS = {"config", "overrides", "enabled", *GRID_AXES}


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _as_tuple(value, field: str) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        value = (value,)
    value = tuple(value)
    if not value:
        raise SweepError(f"sweep.{field}: empty grid")
    return value


def _grid_values(values, field: str) -> tuple:
    values = _as_tuple(values, field)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SweepError(f"sweep.{field}: grid values must be finite numbers, got {v!r}")
    return tuple(float(v) for v in values)


def _method_config(ref: str, root: str) -> str:
    """The path of a method's config: ``"dpo"`` is ``<root>/configs/dpo.py``; a ``.py`` path is relative to
    ``root`` (or to the current directory)."""
    if ref.endswith(".py"):
        path = ref if os.path.isabs(ref) else os.path.join(root, ref)
        if not os.path.isfile(path) and os.path.isfile(os.path.abspath(ref)):
            path = os.path.abspath(ref)
        return os.path.abspath(path)
    return os.path.join(root, "configs", *ref.split(".")) + ".py"


def expand(sweep: ml_collections.ConfigDict, workdir: str, *, config_root: str | None = None,
           only: Sequence[str] | None = None) -> list[RunSpec]:
    """Every run of ``sweep`` as a :class:`RunSpec` with workdir ``workdir/<name>``, in order
    (method, beta, gamma, lr, seed). ``only``: fnmatch patterns of run names or method keys."""
    root = config_root or config_files.configs_root()
    if "methods" not in sweep or not sweep.methods:
        raise SweepError("sweep.methods: no methods")
    seeds = _as_tuple(sweep.get("seeds", (0,)), "seeds")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            raise SweepError(f"sweep.seeds: seeds must be integers, got {s!r}")
    shared = flatten(sweep.get("overrides"))
    evaluate = bool(sweep.get("evaluate", True))
    specs: list[RunSpec] = []
    for key, m in sweep.methods.items():
        unknown = set(m.keys()) - _METHOD_FIELDS
        if unknown:
            raise SweepError(f"sweep.methods.{key}: unknown field(s) {', '.join(sorted(unknown))}; "
                             f"allowed: {', '.join(sorted(_METHOD_FIELDS))}")
        if not m.get("enabled", True):
            continue
        path = _method_config(str(m.get("config", key)), root)
        if not os.path.isfile(path):
            raise SweepError(f"sweep.methods.{key}.config: {path} does not exist")
        axes = [(axis, _grid_values(m[axis], f"methods.{key}.{axis}")) for axis in GRID_AXES if m.get(axis) is not None]
        method_overrides = flatten(m.get("overrides"))
        points: list[dict] = [{}]
        for axis, values in axes:
            points = [{**p, axis: v} for p in points for v in values]
        for p in points:
            for seed in seeds:
                point = {**p, "seed": seed}
                name = "-".join([key] + [f"{a}{_fmt(point[a])}" for a in GRID_AXES if a in point] + [f"seed{seed}"])
                overrides = dict(shared)
                overrides.update(method_overrides)
                overrides.update({GRID_AXES[a]: point[a] for a in GRID_AXES if a in point})
                overrides["seed"] = seed
                overrides["name"] = name
                overrides["eval.enabled"] = evaluate
                overrides["runs_root"] = workdir  # the runs share DIR's embedded SFT model and reference cache
                specs.append(RunSpec(name=name, method=key, config_path=path, config_root=root,
                                     overrides=overrides, point=point, workdir=os.path.join(workdir, name)))
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SweepError(f"sweep: grid points with the same run name: {', '.join(dupes)}")
    if only:
        specs = [s for s in specs
                 if any(fnmatch.fnmatch(s.name, pat) or fnmatch.fnmatch(s.method, pat) for pat in only)]
    return specs
