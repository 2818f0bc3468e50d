"""One run from a config: embedded SFT model if needed, then the configured stage, export, evaluation.

``run(config, workdir)`` is what ``python -m lnpo.main`` calls. It validates the
config before building anything, resolves the starting model (a Hugging Face
directory, or the embedded tiny model's cached SFT checkpoint), prepares the
data, trains with :func:`lnpo.train.trainer.train_stage`, exports the result in
Hugging Face format and, when the config asks, evaluates it.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import ml_collections

from lnpo.config import ConfigError, validate
from lnpo.train import distributed, outputs
from lnpo.train.preemption import process_flag

DONE = "DONE"
DEFAULT_RUNS_ROOT = "runs"


def runs_root(config) -> str:
    """The directory of what runs share: ``config.runs_root`` (default ``runs``, relative to the current
    directory). Never derived from the workdir, so ``--workdir=$HOME/run`` writes nothing else into $HOME."""
    return os.path.abspath(config.get("runs_root") or DEFAULT_RUNS_ROOT)


def default_workdir(config) -> str:
    """``<runs root>/<config.name>``: ``runs/lndpo`` for the README's command."""
    return os.path.join(config.get("runs_root") or DEFAULT_RUNS_ROOT, config.name)


def embedded_seed(config) -> int:
    """The seed of the embedded task's data and SFT model: ``data.embedded_seed``, or ``config.seed`` when it
    is -1 (so a sweep's seeds can share one task and SFT model and vary only the *PO run)."""
    seed = config.data.get("embedded_seed", -1)
    return config.seed if seed == -1 else seed


def embedded_task_dir(config, workdir: str) -> str:  # noqa: ARG001 (shared by every run under the runs root)
    version = config.data.get("embedded_version", 1)
    prefix = "" if version == 1 else f"v{version}-"
    return os.path.join(runs_root(config), "embedded_task", f"{prefix}seed{embedded_seed(config)}")


def reference_cache_dir(config) -> str:
    return config.reference.cache_dir or os.path.join(runs_root(config), "reference_cache")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def sft_config_for(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The SFT-stage config that makes the embedded starting model for ``config``."""
    sft = ml_collections.ConfigDict(config.to_dict())
    sft.name = "sft"
    sft.stage = "sft"
    sft.loss = ml_collections.ConfigDict({"name": "nll"})
    sft.train.steps = config.sft.steps
    sft.train.global_batch = config.sft.global_batch
    sft.train.micro_batches = 1
    sft.optim.lr = config.sft.lr
    sft.optim.warmup_steps = config.sft.warmup_steps
    sft.optim.schedule = "cosine"
    sft.seed = embedded_seed(config)
    sft.data.layout = "packed"  # short SFT examples: packing wastes no compute on padding
    sft.eval.enabled = False
    return sft


def embedded_sft_workdir(config, workdir: str) -> str:
    """``runs/sft-embedded-<hash>``: one cached SFT model per (tiny model, SFT recipe, data, seed)."""
    recipe = {
        "tiny": config.model.tiny.to_dict(),
        "sft": config.sft.to_dict(),
        "data": {k: config.data[k] for k in ("max_prompt_len", "max_len", "truncation")},
        "seed": embedded_seed(config),
        "mesh": list(config.mesh.shape),
    }
    if config.data.get("embedded_version", 1) != 1:  # version 1's key (and cached model) stays as it was
        recipe["embedded_version"] = config.data.embedded_version
    key = _digest(recipe)
    return os.path.join(runs_root(config), f"sft-embedded-{key}")


def export_problem(export: str) -> str | None:
    """Why ``export`` is not a complete, loadable model directory (None when it is): its config, the
    safetensors' tensor names and shapes (headers only, no weights read) and its tokenizer."""
    from lnpo.models.hf import check_pretrained
    from lnpo.train.trainer import load_tokenizer

    try:
        check_pretrained(export)
        load_tokenizer(export)
    except Exception as e:  # noqa: BLE001 (any failure to load means: not done)
        text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        return f"{type(e).__name__}: {text[:300]}"
    return None


def ensure_embedded_sft(config, workdir: str) -> str | None:
    """Train (once) and return the embedded SFT model's export directory; None when preempted.

    The stage is done (``DONE`` written) only once its export is complete and loads
    (:func:`export_problem`); a ``DONE`` whose export does not load is removed and the stage
    resumes from its checkpoints.
    """
    sft_workdir = embedded_sft_workdir(config, workdir)
    export = os.path.join(sft_workdir, "export")
    done = os.path.join(sft_workdir, DONE)
    if os.path.exists(done):
        problem = export_problem(export)
        if problem is None:
            return export
        if jax.process_index() == 0:
            print(f"lnpo: the embedded SFT model {export} does not load ({problem}); finishing its stage again",
                  flush=True)
            os.remove(done)
    from lnpo.train.trainer import train_stage

    outputs.refuse_symlinks(sft_workdir, "embedded SFT workdir")
    if jax.process_index() == 0:
        print(f"lnpo: training the embedded SFT model into {sft_workdir}", flush=True)
    result = train_stage(sft_config_for(config), sft_workdir, init_path=None)
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
    uses_cache = config.stage == "po" and config.reference.mode == "cache"
    if uses_runs_root or (uses_cache and not config.reference.cache_dir):
        outputs.check_writable(runs_root(config), "config.runs_root")
    if uses_runs_root:
        outputs.refuse_symlinks(embedded_task_dir(config, workdir), "embedded task directory")
    if uses_cache:
        cache = reference_cache_dir(config)
        outputs.check_writable(cache, "config.reference.cache_dir" if config.reference.cache_dir else "reference cache")
        outputs.refuse_symlinks(cache, "reference cache")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run ``config`` in ``workdir``; returns a summary dict (also written to ``workdir/summary.json``)."""
    distributed.initialize(config)
    validate(config, num_devices=jax.device_count())
    if config.stage != "sft" and not config.model.path and config.data.source != "embedded":
        raise ConfigError("config.model.path: required when data.source is not 'embedded' "
                          "(the embedded tiny SFT model is trained on the embedded task)")
    if (config.stage == "po" and config.eval.enabled and config.data.source != "embedded"
            and not config.data.ood_prompts):
        raise ConfigError("config.data.ood_prompts: evaluation needs prompts when data.source is not 'embedded' "
                          "(or set eval.enabled=False)")
    from lnpo.train.trainer import train_stage

    check_outputs(config, workdir)  # on every process: each fails alike, none waits for a peer that stopped
    flag = process_flag().install()  # from here a SIGTERM is a clean stop (exit 75), whatever is running
    try:
        if config.model.path:
            init_path = config.model.path
        elif config.stage == "sft":
            init_path = None
        else:
            init_path = ensure_embedded_sft(config, workdir)
            if init_path is None:
                return _preempted_summary(config, workdir, "the embedded SFT stage")
        result = train_stage(config, workdir, init_path=init_path)
    finally:
        flag.uninstall()
    summary = {"workdir": os.path.abspath(workdir), "stage": config.stage, "steps": result["step"],
               "preempted": result["preempted"], "export": result.get("export"), "final": result["last_metrics"]}
    if config.stage == "po" and not result["preempted"] and config.eval.enabled:
        summary["eval"] = evaluate_after_training(config, workdir, init_path)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(format_summary(summary), flush=True)
    return summary


def _preempted_summary(config, workdir: str, where: str) -> dict:
    summary = {"workdir": os.path.abspath(workdir), "stage": config.stage, "steps": 0, "preempted": True,
               "export": None, "final": {}}
    if jax.process_index() == 0:
        print(f"lnpo: preempted during {where}; rerun the same command to resume", flush=True)
    return summary


def evaluate_after_training(config, workdir: str, sft_path: str) -> dict:
    """Evaluate the exported policy against ``sft_path`` on the OOD prompts (settings in run.json)."""
    from lnpo.evaluate import evaluate_workdir

    return evaluate_workdir(workdir)


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
