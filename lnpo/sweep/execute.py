"""Running a sweep: every run of the grid, one after another on this host, skipping finished ones."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import ml_collections

from lnpo import rundir
from lnpo.eval_settings import EvalSettings
from lnpo.sweep.grid import expand
from lnpo.sweep.records import (
    is_writer,
    one_line,
    read_json,
    record_failure,
    run_record,
    run_status,
    settings_changed,
    write_json,
)
from lnpo.sweep.spec import RunSpec


def execute_run(spec: RunSpec, *, config: ml_collections.ConfigDict | None = None,
                log: Callable[[str], None] = print) -> str:
    """Train (unless already trained) and evaluate one run; returns ``"finished"`` or ``"preempted"``.

    Raises whatever the run raises (:func:`run_sweep` records it). Training runs with
    ``config.eval.enabled`` off; the sweep then calls :func:`lnpo.evaluate.evaluate_workdir` with
    ``config``'s :class:`~lnpo.eval_settings.EvalSettings` (and its scorer and prompts, when set), so the
    sampling settings of ``config.eval`` apply whatever an earlier run wrote into run.json (which the sweep
    never rewrites). The SFT model's samples are kept in the runs root
    (:func:`lnpo.rundir.sft_samples_dir`), so the runs that share an SFT model sample it once.
    """
    config = config if config is not None else spec.config()
    if is_writer():
        os.makedirs(spec.workdir, exist_ok=True)
        write_json(rundir.sweep_run_record(spec.workdir), run_record(spec))
    evaluate = bool(config.eval.enabled)
    status = run_status(spec.workdir, evaluate=evaluate)
    info = rundir.read_run_json(spec.workdir) or {}
    export = info.get("export") or rundir.export_dir(spec.workdir)
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
        import lnpo.evaluate

        result = lnpo.evaluate.evaluate_workdir(spec.workdir, settings=EvalSettings.from_config(config),
                                                scorer=config.eval.scorer or None,
                                                prompts_source=config.data.get("ood_prompts") or None,
                                                sft_samples_dir=rundir.sft_samples_dir(config))
        summary_path = rundir.summary_path(spec.workdir)  # run()'s summary, as lnpo.main leaves it
        summary = read_json(summary_path)
        if summary is not None and is_writer():
            summary["eval"] = result
            write_json(summary_path, summary)
    return "finished"


def run_sweep(sweep: ml_collections.ConfigDict, workdir: str, *, config_root: str | None = None,
              only: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict:
    """Run every run of ``sweep`` under ``workdir`` one after another (see the module docstring).

    Returns ``{"runs": [{"name", "status", "error"?, "seconds"}], "finished": n, "skipped": n,
    "failed": [names], "preempted": bool, "report": build_report's result or None}``; writes
    ``workdir/sweep.json`` (this call's runs, then the records of runs it did not run, so processes
    that split one sweep directory with ``only`` leave one file listing every run).
    """
    specs = expand(sweep, workdir, config_root=config_root, only=only)
    if is_writer():
        os.makedirs(workdir, exist_ok=True)
    records = [{"name": s.name, "method": s.method, "point": s.point, "status": "pending"} for s in specs]
    out = {"runs": records, "finished": 0, "skipped": 0, "failed": [], "preempted": False, "report": None}

    mine = {rec["name"] for rec in records}

    def save():  # other processes' runs (``--only`` splits of one sweep directory) keep their records
        if is_writer():
            path = os.path.join(workdir, "sweep.json")
            others = [r for r in (read_json(path) or {}).get("runs", [])
                      if isinstance(r, dict) and r.get("name") not in mine]
            write_json(path, {"name": sweep.get("name", ""), "sweep": sweep.to_dict(), "runs": records + others})

    log(f"lnpo.sweep: {len(specs)} run(s) under {os.path.abspath(workdir)}")
    for i, (spec, rec) in enumerate(zip(specs, records)):
        tag = f"lnpo.sweep: [{i + 1}/{len(specs)}] {spec.name}"
        status = run_status(spec.workdir, evaluate=spec.evaluate)
        if status == "finished":
            rec["status"] = "skipped"
            out["skipped"] += 1
            note = ""
            if settings_changed(spec):
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
            rec.update(status="failed", error=one_line(e), seconds=round(time.time() - t0, 1))
            out["failed"].append(spec.name)
            log(f"{tag}: FAILED: {one_line(e)}")
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
    if sweep.get("report", True) and is_writer():
        try:
            from lnpo.report import build_report

            out["report"] = build_report(workdir)
            log(f"lnpo.sweep: report: {out['report']['markdown']} ({out['report']['ok']} evaluated, "
                f"{len(out['report']['failed'])} failed)")
        except Exception as e:  # noqa: BLE001
            out["report_error"] = one_line(e)
            log(f"lnpo.sweep: the report failed: {one_line(e)}")
    log(f"lnpo.sweep: {out['finished']} run(s) finished, {out['skipped']} skipped, {len(out['failed'])} failed"
        + (f": {', '.join(out['failed'])}" if out["failed"] else ""))
    return out
