"""One run from a config: embedded SFT model if needed, then the configured stage, export, evaluation.

``run(config, workdir)`` is what ``python -m lnpo.main`` calls. It validates the
config before building anything, resolves the starting model (a Hugging Face
directory, or the embedded tiny model's cached SFT checkpoint), prepares the
data, trains with :func:`lnpo.train.trainer.train_stage`, exports the result in
Hugging Face format and, when the config asks, evaluates it.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from lnpo import rundir
from lnpo.config import ConfigError, validate
from lnpo.models import preflight
from lnpo.train import distributed, outputs, stages, trainer
from lnpo.train.preemption import process_flag


def sft_config_for(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The SFT-stage config that makes the embedded starting model for ``config``: the one SFT recipe,
    ``configs/sft.py``'s ``sft_stage``, applied to a copy of ``config``."""
    from lnpo.config_files import load_module, recipe_file

    sft = load_module(recipe_file("sft")).sft_stage(ml_collections.ConfigDict(config.to_dict()))
    sft.seed = rundir.embedded_seed(config)  # the SFT model belongs to the task's seed, not the run's
    return sft


def export_problem(export: str) -> str | None:
    """Why ``export`` is not a complete, loadable model directory (None when it is): its config, the
    safetensors' tensor names and shapes (headers only, no weights read) and its tokenizer."""
    from lnpo.models.hf import check_pretrained

    try:
        check_pretrained(export)
        preflight.load_tokenizer(export)
    except Exception as e:  # noqa: BLE001 (any failure to load means: not done)
        text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        return f"{type(e).__name__}: {text[:300]}"
    return None


def ensure_embedded_sft(config) -> str | None:
    """Train (once) and return the embedded SFT model's export directory; None when preempted.

    The stage is done (``DONE`` written) only once its export is complete and loads
    (:func:`export_problem`); a ``DONE`` whose export does not load is removed and the stage
    resumes from its checkpoints.
    """
    sft_workdir = rundir.embedded_sft_workdir(config)
    export = rundir.export_dir(sft_workdir)
    done = rundir.done_marker(sft_workdir)
    if os.path.exists(done):
        problem = export_problem(export)
        if problem is None:
            return export
        if jax.process_index() == 0:
            print(f"lnpo: the embedded SFT model {export} does not load ({problem}); finishing its stage again",
                  flush=True)
            os.remove(done)
    outputs.refuse_symlinks(sft_workdir, "embedded SFT workdir")
    if jax.process_index() == 0:
        print(f"lnpo: training the embedded SFT model into {sft_workdir}", flush=True)
    sft = sft_config_for(config)
    result = trainer.train_stage(sft, sft_workdir, init_path=None, paths=rundir.StagePaths.for_config(sft))
    if result["preempted"]:
        return None
    problem = export_problem(export)
    if problem is not None:
        raise ConfigError(f"the embedded SFT model's export {export} does not load ({problem}); "
                          "check config.model.tiny")
    if jax.process_index() == 0:
        with open(done, "w") as f:
            f.write("ok\n")
    return export


def check_outputs(config, workdir: str) -> None:
    """Before any work: every directory this run writes is writable, holds no symbolic link, and is not an
    input (:mod:`lnpo.train.outputs`)."""
    outputs.refuse_inputs(workdir, {"model.path": config.model.path, "data.tokenizer": config.data.tokenizer,
                                    "data.source": config.data.source if os.path.isdir(config.data.source) else ""})
    outputs.check_writable(workdir, "workdir")
    outputs.refuse_symlinks(workdir, "workdir")
    uses_runs_root = not config.model.path or config.data.source == "embedded"
    uses_cache = stages.get(config.stage).objective and config.reference.mode == "cache"
    if uses_runs_root or (uses_cache and not config.reference.cache_dir):
        outputs.check_writable(rundir.runs_root(config), "config.runs_root")
    if uses_runs_root:
        outputs.refuse_symlinks(rundir.embedded_task_dir(config), "embedded task directory")
    if uses_cache:
        cache = rundir.reference_cache_dir(config)
        outputs.check_writable(cache, "config.reference.cache_dir" if config.reference.cache_dir else "reference cache")
        outputs.refuse_symlinks(cache, "reference cache")


def check_config(config) -> None:
    """What a run needs beyond :func:`lnpo.config.validate`: a starting model, and prompts to evaluate on."""
    validate(config, num_devices=jax.device_count())
    stage = stages.get(config.stage)
    if stage.needs_start_model and not config.model.path and config.data.source != "embedded":
        raise ConfigError("config.model.path: required when data.source is not 'embedded' "
                          "(the embedded tiny SFT model is trained on the embedded task)")
    if (stage.generation_eval and config.eval.enabled and config.data.source != "embedded"
            and not config.data.ood_prompts):
        raise ConfigError("config.data.ood_prompts: evaluation needs prompts when data.source is not 'embedded' "
                          "(or set eval.enabled=False)")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run ``config`` in ``workdir``; returns a summary dict (also written to ``workdir/summary.json``).

    Resolves the starting model (``model.path``; the embedded SFT model, trained once, for a stage that needs
    one; none for SFT) and the stage's paths (:class:`lnpo.rundir.StagePaths`), then
    :func:`lnpo.train.trainer.train_stage`, then the generation-based evaluation if the stage has one."""
    distributed.initialize(config)
    check_config(config)
    stage = stages.get(config.stage)
    check_outputs(config, workdir)  # on every process: each fails alike, none waits for a peer that stopped
    flag = process_flag().install()  # from here a SIGTERM is a clean stop (exit 75), whatever is running
    try:
        init_path = config.model.path or None
        if init_path is None and stage.needs_start_model:
            init_path = ensure_embedded_sft(config)
            if init_path is None:
                return _preempted_summary(config, workdir, "the embedded SFT stage")
        result = trainer.train_stage(config, workdir, init_path=init_path,
                                     paths=rundir.StagePaths.for_config(config))
    finally:
        flag.uninstall()
    summary = {"workdir": os.path.abspath(workdir), "stage": config.stage, "steps": result["step"],
               "preempted": result["preempted"], "export": result.get("export"), "final": result["last_metrics"]}
    if stage.generation_eval and not result["preempted"] and config.eval.enabled:
        from lnpo.evaluate import evaluate_workdir

        summary["eval"] = evaluate_workdir(workdir)
    if jax.process_index() == 0:
        with open(rundir.summary_path(workdir), "w") as f:
            json.dump(summary, f, indent=2)
        print(format_summary(summary), flush=True)
    return summary


def _preempted_summary(config, workdir: str, where: str) -> dict:
    summary = {"workdir": os.path.abspath(workdir), "stage": config.stage, "steps": 0, "preempted": True,
               "export": None, "final": {}}
    if jax.process_index() == 0:
        print(f"lnpo: preempted during {where}; rerun the same command to resume", flush=True)
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"lnpo: {summary['stage']} run in {summary['workdir']}: {summary['steps']} steps"
             + (" (preempted; rerun the same command to resume)" if summary["preempted"] else "")]
    final = summary.get("final") or {}
    keys = [k for k in ("loss", "rewards/accuracies", "rewards/margins", "eval/loss", "eval/rewards/accuracies")
            if k in final]
    if keys:
        lines.append("  " + ", ".join(f"{k}={final[k]:.4f}" for k in keys))
    if summary.get("export"):
        lines.append(f"  exported Hugging Face model: {summary['export']}")
    ev = summary.get("eval") or {}
    for key in ("score_mean", "win_rate_vs_chosen", "win_rate_vs_sft", "kl_seq_mean", "length_tokens_mean"):
        if ev.get(key) is not None:  # None: not computable (no scorer, no SFT model)
            lines.append(f"  eval {key} = {ev[key]:.4f}")
    return "\n".join(lines)
