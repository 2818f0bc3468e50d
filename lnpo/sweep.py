"""Hyperparameter sweeps: ``python -m lnpo.sweep --config=configs/sweeps/<name>.py --workdir=DIR``.

A sweep config (an ml_collections file under ``configs/sweeps/``) names methods
and their grids. Every grid point becomes one run: the method's config file
(``configs/dpo.py``, ``configs/lndpo.py``, ``configs/simpo.py``, ...), then the
sweep's shared overrides, the method's overrides and the grid point, trained
and evaluated by :func:`lnpo.train.run.run` in ``DIR/<run name>``. Every run
directory is a child of ``DIR``, so all runs share one runs root: the embedded
SFT model (``DIR/sft-embedded-*``) is trained once and the reference log-prob
cache (``DIR/reference_cache``) is computed once per distinct reference and
data, whatever the number of runs.

Sweep config fields (see ``configs/sweeps/smoke.py`` for a small one)::

    name       str: default workdir runs/<name>
    methods    one entry per method; the key is the run-name prefix:
      <key>.config     the method's config: "dpo" (configs/dpo.py) or a path to a .py file
      <key>.beta       tuple of loss.beta values   \\
      <key>.gamma      tuple of loss.gamma values   | optional grid axes; an absent axis
      <key>.lr         tuple of optim.lr values    /  keeps the method config's value
      <key>.overrides  (optional) nested run-config overrides for this method only
      <key>.enabled    (optional) False leaves the method out
    seeds      tuple of seeds (config.seed)
    overrides  nested run-config overrides for every run, e.g. overrides.train.steps = 200
    evaluate   bool: evaluate every run (config.eval.enabled)
    report     bool: build DIR/report.md + report.html at the end (lnpo.report.build_report)

The run name is ``<key>-beta<b>[-gamma<g>]-lr<lr>-seed<s>`` (values with ``%g``),
e.g. ``dpo-beta0.1-lr1e-05-seed0``. A sweep file defines ``get_config(arg=None)``
(``--config=configs/sweeps/paper.py:/ckpt/sft`` passes ``"/ckpt/sft"`` as ``arg``)
and optionally ``finalize(sweep)``, called after the command-line overrides, to
derive fields (``paper.py`` picks the data files from ``direction`` there).

``python -m lnpo.sweep`` keeps JAX's persistent compilation cache in
``DIR/xla_cache`` (unless ``JAX_COMPILATION_CACHE_DIR`` names another): the learning
rate and the loss hyperparameters are inputs of the compiled steps, so grid points
of one method share their compiled programs: the first run compiles them (those
over JAX's 1 s minimum compile time are cached), later runs load them.

Runs, one after another on this host. A run is *finished* when
``eval/summary.json`` exists, or when its ``run.json`` says ``"status":
"trained"`` and evaluation is off; finished runs are skipped, so rerunning the
same command continues an interrupted sweep (a run stopped mid-training resumes
from its last checkpoint; a trained but unevaluated run is only evaluated). A
run that raises is recorded in its ``run.json`` (``"status": "failed"``,
``"error"``: one line; the traceback in ``error.log``) and the sweep goes on;
failed runs are retried by the next invocation. ``DIR/sweep.json`` lists every
run's status. At the end the report is built from every run under ``DIR``. Exit
status: 0, 1 when a run failed, 2 for an invalid sweep config, 75 when preempted
(SIGTERM: the current run checkpoints, the sweep stops; rerun the same command).

``--print_commands`` prints one ``python -m lnpo.main --config=configs/<method>.py
--workdir=DIR/<run> --config.loss.beta=... ...`` line per run instead (for pods:
run one to completion first so the SFT model and reference cache exist, or launch
them all on a shared ``DIR``), then ``python -m lnpo.report DIR`` builds the report.

Python API: :func:`load_sweep`, :func:`expand`, :func:`run_sweep`,
:func:`run_status`, :func:`print_commands`, :class:`RunSpec`.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import importlib
import importlib.util
import json
import math
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections

from lnpo.errors import InputNotFound, UserError

__all__ = [
    "GRID_AXES",
    "RunSpec",
    "SweepError",
    "apply_overrides",
    "expand",
    "finalize_sweep",
    "flatten",
    "load_sweep",
    "main",
    "print_commands",
    "run_status",
    "run_sweep",
    "set_run_overrides",
]

#: grid axis -> the run-config field it sets (in run-name order; the seed comes last).
GRID_AXES = {"beta": "loss.beta", "gamma": "loss.gamma", "lr": "optim.lr"}
_METHOD_FIELDS = {"config", "overrides", "enabled", *GRID_AXES}
#: run.json ``eval`` keys that lnpo.evaluate reads (its DEFAULT_SETTINGS, plus dtype and logprob_chunk).
_EVAL_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "num_samples", "seed", "max_prompts",
              "batch_size", "stop_strings", "max_prompt_len", "dtype", "logprob_chunk")


class SweepError(UserError, ValueError):
    """An invalid sweep config; the message names the field."""


# ----------------------------------------------------------------------------- config files
def configs_root(path: str | None = None) -> str:
    """The directory holding ``configs/`` (what must be on sys.path for ``import configs.dpo``).

    From a config file's path: the parent of its nearest ancestor directory named
    ``configs``; otherwise the current directory if it has ``configs/``, else the
    directory above the ``lnpo`` package.
    """
    if path:
        d = os.path.dirname(os.path.abspath(path))
        while d and os.path.dirname(d) != d:
            if os.path.basename(d) == "configs":
                return os.path.dirname(d)
            d = os.path.dirname(d)
    if os.path.isdir(os.path.join(os.getcwd(), "configs")):
        return os.getcwd()
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _on_path(root: str) -> None:
    if root not in sys.path:
        sys.path.insert(0, root)


def _split_spec(spec: str) -> tuple[str, str | None]:
    path, sep, arg = spec.partition(":")
    return path, (arg if sep else None)


def _load_module(path: str, root: str | None = None):
    if not os.path.isfile(path):
        raise InputNotFound(f"{path}: no such sweep config file")
    _on_path(root or configs_root(path))
    name = "lnpo_sweep_config_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(path))
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def finalize_sweep(sweep: ml_collections.ConfigDict, path: str) -> ml_collections.ConfigDict:
    """Call the sweep file's ``finalize(sweep)`` (if it has one) after overrides; returns ``sweep``."""
    return _finalize(_load_module(_split_spec(path)[0]), sweep)


def _finalize(module, sweep):
    hook = getattr(module, "finalize", None)
    if hook is None:
        return sweep
    with sweep.unlocked():
        result = hook(sweep)
    return sweep if result is None else result


def load_sweep(spec: str, overrides: Mapping[str, Any] | None = None,
               run_overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """Load a sweep config: ``spec`` is ``path[:arg]``; ``overrides`` maps dotted sweep-config
    keys (``"methods.dpo.beta"``, ``"overrides.train.steps"``, ``"sft_path"``) to values,
    applied before the file's ``finalize``; a key that the file does not define is an error.
    ``run_overrides``: dotted run-config keys (``"train.steps"``, ``"model.path"``) added to
    ``sweep.overrides`` after ``finalize`` (as ``--set`` does), so they apply to every run."""
    path, arg = _split_spec(spec)
    module = _load_module(path)
    sweep = module.get_config(arg) if arg is not None else module.get_config()
    for key, value in (overrides or {}).items():
        node, parts = sweep, key.split(".")
        for part in parts[:-1]:
            if part not in node:
                raise SweepError(f"sweep override {key!r}: the sweep config has no field {part!r}")
            node = node[part]
        if parts[-1] not in node:
            raise SweepError(f"sweep override {key!r}: the sweep config has no field {parts[-1]!r}")
        try:
            node[parts[-1]] = tuple(value) if isinstance(value, list) else value
        except TypeError as e:
            raise SweepError(f"sweep override {key}={value!r}: {e}") from None
    sweep = _finalize(module, sweep)
    return set_run_overrides(sweep, run_overrides or {})


def set_run_overrides(sweep: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Add dotted run-config ``overrides`` to ``sweep.overrides`` (every run gets them); returns ``sweep``."""
    if overrides:
        with sweep.unlocked():
            if sweep.get("overrides") is None:
                sweep.overrides = ml_collections.ConfigDict()
            apply_overrides(sweep.overrides, overrides)
    return sweep


# ----------------------------------------------------------------------------- overrides
def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested ConfigDict / dict -> ``{"a.b.c": leaf}`` in the mapping's key order (dotted dict keys are kept)."""
    out: dict[str, Any] = {}
    if tree is None:
        return out
    items = tree.items()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, Mapping)):
            out.update(flatten(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Set dotted ``overrides`` on ``config`` in order. A missing field (or section) is created,
    so overrides may carry fields that ``configs/base.py`` does not define yet; a value of the
    wrong type for an existing field raises :class:`SweepError`."""
    for key, value in overrides.items():
        parts = key.split(".")
        node = config
        for i, part in enumerate(parts[:-1]):
            if part not in node:
                node[part] = ml_collections.ConfigDict()
            node = node[part]
            if not isinstance(node, ml_collections.ConfigDict):
                raise SweepError(f"override {key}: config.{'.'.join(parts[:i + 1])} is not a section")
        try:
            node[parts[-1]] = tuple(value) if isinstance(value, list) else value
        except (TypeError, KeyError) as e:
            raise SweepError(f"override {key}={value!r}: {e}") from None
    return config


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------- expansion
@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a sweep.

    name: the run name (``DIR/<name>`` is its workdir); method: the sweep's method key;
    config_module / config_path: the method's config file (module name for import, file path);
    config_root: the directory holding ``configs/``; overrides: dotted run-config overrides in
    application order (shared, method, grid point); point: the grid point
    (``beta``/``gamma``/``lr`` when swept, ``seed``).
    """

    name: str
    method: str
    config_module: str | None
    config_path: str
    config_root: str
    overrides: dict
    point: dict
    workdir: str

    @property
    def evaluate(self) -> bool:
        return bool(self.overrides.get("eval.enabled", True))

    def base_config(self) -> ml_collections.ConfigDict:
        """The method config file's ``get_config()``, without the sweep's overrides."""
        _on_path(self.config_root)
        if self.config_module:
            module = importlib.import_module(self.config_module)
        else:
            module = _load_module(self.config_path, self.config_root)
        return module.get_config()

    def config(self) -> ml_collections.ConfigDict:
        """The run's config: :meth:`base_config` with :attr:`overrides` applied."""
        return apply_overrides(self.base_config(), self.overrides)

    def command(self, python: str = "python", workdir: str | None = None) -> str:
        """The ``python -m lnpo.main`` line that runs this run on its own."""
        path = self.config_path
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            path = rel
        args = [python, "-m", "lnpo.main", f"--config={path}", f"--workdir={workdir or self.workdir}"]
        args += [f"--config.{k}={_flag_value(k, v)}" for k, v in self.overrides.items()]
        return " ".join(shlex.quote(a) for a in args)


def _flag_value(key: str, value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return repr(value)
    raise SweepError(f"override {key}={value!r}: cannot be written as a command-line flag")


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


def _method_config(ref: str, root: str) -> tuple[str | None, str]:
    if ref.endswith(".py"):
        path = ref if os.path.isabs(ref) else os.path.join(root, ref)
        if not os.path.isfile(path) and os.path.isfile(os.path.abspath(ref)):
            path = os.path.abspath(ref)
        rel = os.path.relpath(os.path.abspath(path), root)
        module = rel[:-3].replace(os.sep, ".") if not rel.startswith("..") and rel.startswith("configs") else None
        return module, os.path.abspath(path)
    path = os.path.join(root, "configs", *ref.split(".")) + ".py"
    return "configs." + ref, path


def expand(sweep: ml_collections.ConfigDict, workdir: str, *, config_root: str | None = None,
           only: Sequence[str] | None = None) -> list[RunSpec]:
    """Every run of ``sweep`` as a :class:`RunSpec` with workdir ``workdir/<name>``, in order
    (method, beta, gamma, lr, seed). ``only``: fnmatch patterns of run names or method keys."""
    root = config_root or configs_root()
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
        module, path = _method_config(str(m.get("config", key)), root)
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
                specs.append(RunSpec(name=name, method=key, config_module=module, config_path=path, config_root=root,
                                     overrides=overrides, point=point, workdir=os.path.join(workdir, name)))
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SweepError(f"sweep: grid points with the same run name: {', '.join(dupes)}")
    if only:
        specs = [s for s in specs
                 if any(fnmatch.fnmatch(s.name, pat) or fnmatch.fnmatch(s.method, pat) for pat in only)]
    return specs


# ----------------------------------------------------------------------------- run state
def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def run_status(workdir: str, *, evaluate: bool = True) -> str:
    """``"finished"`` (eval/summary.json exists, or run.json status "trained" and ``evaluate`` is off),
    ``"trained"`` (trained and exported, not evaluated), ``"failed"`` (run.json status "failed"),
    ``"started"`` (the directory exists) or ``"new"``."""
    if os.path.isfile(os.path.join(workdir, "eval", "summary.json")):
        return "finished"
    run = _read_json(os.path.join(workdir, "run.json"))
    status = (run or {}).get("status")
    if status == "trained":
        return "trained" if evaluate else "finished"
    if status == "failed":
        return "failed"
    return "started" if os.path.isdir(workdir) else "new"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= 500 else line[:497] + "..."


def _is_writer() -> bool:
    if "jax" not in sys.modules:
        return True
    import jax

    return jax.process_index() == 0


def record_failure(spec: RunSpec, exc: BaseException, config: ml_collections.ConfigDict | None = None) -> None:
    """Mark ``spec``'s run as failed: ``run.json`` gets ``"status": "failed"`` and ``"error"`` (one line),
    keeping what the trainer wrote; the traceback goes to ``error.log``."""
    if not _is_writer():
        return
    path = os.path.join(spec.workdir, "run.json")
    info = _read_json(path)
    if info is None:
        loss = {k: v for k, v in ((config.loss.to_dict() if config is not None else {}).items()) if k != "name"}
        for axis, field in GRID_AXES.items():
            if field.startswith("loss.") and axis in spec.point:
                loss[axis] = spec.point[axis]
        info = {
            "name": spec.name, "stage": config.stage if config is not None else "po",
            "method": config.loss.name if config is not None else spec.method, "loss": loss,
            "lr": spec.point.get("lr", config.optim.lr if config is not None else None),
            "seed": spec.point["seed"],
            "steps": config.train.steps if config is not None else spec.overrides.get("train.steps"),
            "export": None, "sft_path": None, "eval_prompts": "", "scorer": "",
        }
    info["status"] = "failed"
    info["error"] = _one_line(exc)
    _write_json(path, info)
    with open(os.path.join(spec.workdir, "error.log"), "w", encoding="utf-8") as f:
        f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def _eval_settings(config: ml_collections.ConfigDict) -> dict:
    ev = config.get("eval") or {}
    out = {}
    for key in _EVAL_KEYS:
        if key in ev:
            value = ev[key]
            if key == "max_prompts" and not value:
                value = None  # config.eval.max_prompts = 0 means every prompt
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def prepare_eval(workdir: str, config: ml_collections.ConfigDict) -> dict:
    """Complete ``workdir/run.json`` for :func:`lnpo.evaluate.evaluate_workdir`: the ``eval`` dict of
    sampling settings from ``config.eval`` (keys the trainer did not write), and ``scorer`` /
    ``eval_prompts`` from ``config.eval.scorer`` / ``config.data.ood_prompts`` when empty."""
    path = os.path.join(workdir, "run.json")
    info = _read_json(path)
    if info is None:
        raise InputNotFound(f"{path}: missing or unreadable after training")
    changed = False
    settings = _eval_settings(config)
    ev = dict(info.get("eval") or {})
    for key, value in settings.items():
        if key not in ev:
            ev[key] = value
            changed = True
    if ev:
        info["eval"] = ev
    scorer = (config.get("eval") or {}).get("scorer", "")
    if not info.get("scorer") and scorer:
        info["scorer"], changed = scorer, True
    prompts = config.data.get("ood_prompts", "")
    if not info.get("eval_prompts") and prompts:
        info["eval_prompts"], changed = prompts, True
    if changed and _is_writer():
        _write_json(path, info)
    return info


def _run_record(spec: RunSpec) -> dict:
    return {"name": spec.name, "method": spec.method, "config": spec.config_path, "overrides": spec.overrides}


def _settings_changed(spec: RunSpec) -> bool:
    old = _read_json(os.path.join(spec.workdir, "sweep_run.json"))
    if old is None:
        return False
    new = json.loads(json.dumps(_run_record(spec), default=str))
    return old.get("overrides") != new["overrides"] or old.get("config") != new["config"]


def execute_run(spec: RunSpec, *, config: ml_collections.ConfigDict | None = None,
                log: Callable[[str], None] = print) -> str:
    """Train (unless already trained) and evaluate one run; returns ``"finished"`` or ``"preempted"``.

    Raises whatever the run raises (:func:`run_sweep` records it). Training runs with
    ``config.eval.enabled`` off; the sweep then completes run.json (:func:`prepare_eval`)
    and calls :func:`lnpo.evaluate.evaluate_workdir`, so the sampling settings of
    ``config.eval`` apply whatever the trainer writes into run.json.
    """
    config = config if config is not None else spec.config()
    if _is_writer():
        os.makedirs(spec.workdir, exist_ok=True)
        _write_json(os.path.join(spec.workdir, "sweep_run.json"), _run_record(spec))
    evaluate = bool(config.eval.enabled)
    status = run_status(spec.workdir, evaluate=evaluate)
    info = _read_json(os.path.join(spec.workdir, "run.json")) or {}
    export = info.get("export") or os.path.join(spec.workdir, "export")
    if status == "trained" and os.path.isdir(export):
        log(f"lnpo.sweep: {spec.name}: already trained; evaluating")
    else:
        from lnpo.train import run as run_module

        train_config = ml_collections.ConfigDict(config.to_dict())
        train_config.eval.enabled = False
        summary = run_module.run(train_config, spec.workdir)
        if summary.get("preempted"):
            return "preempted"
    if evaluate:
        prepare_eval(spec.workdir, config)
        import lnpo.evaluate

        result = lnpo.evaluate.evaluate_workdir(spec.workdir)
        summary_path = os.path.join(spec.workdir, "summary.json")  # run()'s summary, as lnpo.main leaves it
        summary = _read_json(summary_path)
        if summary is not None and _is_writer():
            summary["eval"] = result
            _write_json(summary_path, summary)
    return "finished"


def run_sweep(sweep: ml_collections.ConfigDict, workdir: str, *, config_root: str | None = None,
              only: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict:
    """Run every run of ``sweep`` under ``workdir`` one after another (see the module docstring).

    Returns ``{"runs": [{"name", "status", "error"?, "seconds"}], "finished": n, "skipped": n,
    "failed": [names], "preempted": bool, "report": build_report's result or None}``; writes
    ``workdir/sweep.json``.
    """
    specs = expand(sweep, workdir, config_root=config_root, only=only)
    if _is_writer():
        os.makedirs(workdir, exist_ok=True)
    records = [{"name": s.name, "method": s.method, "point": s.point, "status": "pending"} for s in specs]
    out = {"runs": records, "finished": 0, "skipped": 0, "failed": [], "preempted": False, "report": None}

    def save():
        if _is_writer():
            _write_json(os.path.join(workdir, "sweep.json"),
                        {"name": sweep.get("name", ""), "sweep": sweep.to_dict(), "runs": records})

    log(f"lnpo.sweep: {len(specs)} run(s) under {os.path.abspath(workdir)}")
    for i, (spec, rec) in enumerate(zip(specs, records)):
        tag = f"lnpo.sweep: [{i + 1}/{len(specs)}] {spec.name}"
        status = run_status(spec.workdir, evaluate=spec.evaluate)
        if status == "finished":
            rec["status"] = "skipped"
            out["skipped"] += 1
            note = ""
            if _settings_changed(spec):
                note = f" (WARNING: finished with other settings; delete {spec.workdir} to rerun it)"
            log(f"{tag}: finished, skipped{note}")
            save()
            continue
        log(f"{tag}: {'retrying failed run' if status == 'failed' else 'running'}")
        t0 = time.time()
        config = None
        try:
            config = spec.config()
            result = execute_run(spec, config=config, log=log)
        except Exception as e:  # noqa: BLE001 -- a failed run must not stop the others
            record_failure(spec, e, config)
            rec.update(status="failed", error=_one_line(e), seconds=round(time.time() - t0, 1))
            out["failed"].append(spec.name)
            log(f"{tag}: FAILED: {_one_line(e)}")
            save()
            continue
        rec["seconds"] = round(time.time() - t0, 1)
        if result == "preempted":
            rec["status"] = "preempted"
            out["preempted"] = True
            log(f"{tag}: preempted; rerun the same command to resume")
            save()
            return out
        rec["status"] = "finished"
        out["finished"] += 1
        log(f"{tag}: finished in {rec['seconds']:.0f} s")
        save()
    if sweep.get("report", True) and _is_writer():
        try:
            from lnpo.report import build_report

            out["report"] = build_report(workdir)
            log(f"lnpo.sweep: report: {out['report']['markdown']} ({out['report']['ok']} evaluated, "
                f"{len(out['report']['failed'])} failed)")
        except Exception as e:  # noqa: BLE001
            out["report_error"] = _one_line(e)
            log(f"lnpo.sweep: the report failed: {_one_line(e)}")
    log(f"lnpo.sweep: {out['finished']} run(s) finished, {out['skipped']} skipped, {len(out['failed'])} failed"
        + (f": {', '.join(out['failed'])}" if out["failed"] else ""))
    return out


def missing_fields(spec: RunSpec) -> list[str]:
    """Overrides of ``spec`` that its method config file does not define (``lnpo.main`` rejects them)."""
    base = spec.base_config()
    missing = []
    for key in spec.overrides:
        node = base
        for part in key.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    return missing


def print_commands(sweep: ml_collections.ConfigDict, workdir: str, *, config_root: str | None = None,
                   only: Sequence[str] | None = None, python: str = "python", file=None,
                   warn: Callable[[str], None] | None = None) -> list[str]:
    """Print (and return) one ``python -m lnpo.main`` command per run; warns (``warn``, default
    stderr) about overrides that the method config files do not define."""
    file = file or sys.stdout
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    specs = expand(sweep, workdir, config_root=config_root, only=only)
    missing: set[str] = set()
    lines = []
    for spec in specs:
        missing.update(missing_fields(spec))
        line = spec.command(python=python)
        lines.append(line)
        print(line, file=file)
    if missing:
        warn("lnpo.sweep: warning: lnpo.main cannot set these fields (its config files do not define them): "
             + ", ".join(f"config.{k}" for k in sorted(missing)))
    return lines


# ----------------------------------------------------------------------------- command line
def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def share_compiled_programs(workdir: str) -> str:
    """Use JAX's persistent compilation cache in ``workdir/xla_cache`` unless one is configured already
    (``JAX_COMPILATION_CACHE_DIR`` or ``jax_compilation_cache_dir``); returns the directory in use.

    Grid points differ in the learning rate and the objective's hyperparameters, which
    the train and evaluation steps take as inputs, so runs of one method and shape lower
    to the same programs: the first run compiles them, every later run (and a rerun
    after preemption) loads them. Called by the command line, once per process.
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    path = os.path.join(os.path.abspath(workdir), "xla_cache")
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def main(argv=None):
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "sweep config file (configs/sweeps/<name>.py[:arg])",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "the sweep directory (default: runs/<sweep name>); run i goes to DIR/<run>")
    flags.DEFINE_bool("print_commands", False, "print one `python -m lnpo.main` command per run instead of running")
    flags.DEFINE_bool("dry_run", False, "list the runs and their status; run nothing")
    flags.DEFINE_list("only", None, "run only these runs: comma-separated fnmatch patterns of run names or methods")
    flags.DEFINE_multi_string("set", [], "KEY=VALUE: a run-config override for every run, e.g. --set train.steps=10")
    flags.DEFINE_string("python", "python", "interpreter in the printed commands")
    flags.mark_flags_as_required(["config"])

    def _main(_):
        from absl import logging

        logging.set_verbosity(logging.WARNING)
        f = flags.FLAGS
        spec = config_flags.get_config_filename(f["config"])
        path = _split_spec(spec)[0]
        sweep = finalize_sweep(f.config, spec)
        extra = {}
        for item in f.set:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SweepError(f"--set {item!r}: expected KEY=VALUE")
            extra[key.strip()] = _parse_value(value)
        set_run_overrides(sweep, extra)
        workdir = f.workdir or os.path.join("runs", sweep.get("name", "sweep"))
        root = configs_root(path)
        if f.print_commands:
            print_commands(sweep, workdir, config_root=root, only=f.only, python=f.python)
            return 0
        if f.dry_run:
            for s in expand(sweep, workdir, config_root=root, only=f.only):
                print(f"{s.name}\t{run_status(s.workdir, evaluate=s.evaluate)}")
            return 0
        cache = share_compiled_programs(workdir)
        print(f"lnpo.sweep: compiled programs are shared through {cache}")
        result = run_sweep(sweep, workdir, config_root=root, only=f.only)
        if result["preempted"]:
            from lnpo.cli import EXIT_PREEMPTED

            sys.exit(EXIT_PREEMPTED)  # as lnpo.main: rerun the same command to resume
        sys.exit(1 if result["failed"] else 0)

    argv = sys.argv if argv is None else argv
    for arg in argv:
        if arg.startswith("--config="):
            _on_path(configs_root(_split_spec(arg.split("=", 1)[1])[0]))
    from lnpo.cli import report_user_errors

    app.run(lambda args: report_user_errors("lnpo.sweep", _main, args), argv=argv)


if __name__ == "__main__":
    main()
