"""What a sweep knows of its runs on disk: a run's status, its ``sweep_run.json``, its failure record."""

from __future__ import annotations

import json
import os
import sys
import traceback

import ml_collections

from lnpo import rundir
from lnpo.sweep.grid import GRID_AXES
from lnpo.sweep.spec import RunSpec


def read_json(path: str) -> dict | None:
    """The JSON object in ``path``; None when the file is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: str, obj) -> None:
    """Write ``obj`` to ``path`` as indented JSON, atomically (a temporary file, then a rename)."""
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
    if os.path.isfile(rundir.eval_summary(workdir)):
        return "finished"
    run = rundir.read_run_json(workdir)
    status = (run or {}).get("status")
    if status == "trained":
        return "trained" if evaluate else "finished"
    if status == "failed":
        return "failed"
    return "started" if os.path.isdir(workdir) else "new"


def one_line(exc: BaseException) -> str:
    """``"<Type>: <message>"`` on one line, at most 500 characters (a failed run's ``error``)."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= 500 else line[:497] + "..."


def is_writer() -> bool:
    """Whether this process writes the sweep's files (process 0, or any process before JAX is imported)."""
    if "jax" not in sys.modules:
        return True
    import jax

    return jax.process_index() == 0


def record_failure(spec: RunSpec, exc: BaseException, config: ml_collections.ConfigDict | None = None) -> None:
    """Mark ``spec``'s run as failed: ``run.json`` gets ``"status": "failed"`` and ``"error"`` (one line),
    keeping what the trainer wrote; the traceback goes to ``error.log``."""
    if not is_writer():
        return
    info = rundir.read_run_json(spec.workdir)
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
    info["error"] = one_line(exc)
    rundir.write_run_info(spec.workdir, info)
    with open(rundir.error_log(spec.workdir), "w", encoding="utf-8") as f:
        f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))



def run_record(spec: RunSpec) -> dict:
    """What ``sweep_run.json`` records of a run: its name, method, config file and overrides."""
    return {"name": spec.name, "method": spec.method, "config": spec.config_path, "overrides": spec.overrides}


def settings_changed(spec: RunSpec) -> bool:
    """Whether the run's ``sweep_run.json`` names another config file or other overrides than ``spec``."""
    old = read_json(rundir.sweep_run_record(spec.workdir))
    if old is None:
        return False
    new = json.loads(json.dumps(run_record(spec), default=str))
    return old.get("overrides") != new["overrides"] or old.get("config") != new["config"]
