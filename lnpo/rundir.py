"""The one owner of the run directory: its layout, ``run.json``'s schema, the runs root and what runs share.

Everyone else asks this module for a path or for ``run.json``; no other module spells these names.
Stdlib only (``lnpo.report`` reads run directories without JAX).

::

    <workdir>/metrics.jsonl            one JSON object per logged step
    <workdir>/tensorboard/             the same scalars
    <workdir>/checkpoints/<step>/      orbax: state + data (iterator position) + checksums
    <workdir>/export/                  Hugging Face config.json + safetensors + tokenizer (LoRA: merged)
    <workdir>/adapter/                 a LoRA run's PEFT adapter (adapter_config.json, adapter_model.safetensors)
    <workdir>/run.json                 RunInfo (below): what evaluation, sweeps and reports read
    <workdir>/summary.json             the run's summary (lnpo.train.run)
    <workdir>/eval/summary.json        the generation-based evaluation (lnpo.evaluate), with
    <workdir>/eval/samples.jsonl       one line per policy sample, and
    <workdir>/eval/sft_samples.jsonl   the SFT model's samples
    <workdir>/DONE                     a finished embedded-SFT stage (its export loads)
    <workdir>/sweep_run.json           a sweep's run: its name, method, config file and overrides
    <workdir>/error.log                a failed sweep run's traceback (run.json: status failed, error)
    <runs root>/embedded_task/seed<s>/ the embedded task's files (v<n>-seed<s>/ for task versions > 1)
    <runs root>/sft-embedded-<hash>/   the embedded SFT model, shared by runs under the same root
    <runs root>/reference_cache/       reference log-probs keyed by weights + data + numerics

The runs root is ``config.runs_root`` (default ``runs``, relative to the current directory; a sweep sets it
to its own directory), never the workdir's parent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from lnpo.errors import CheckpointError, InputNotFound
from lnpo.eval_settings import EvalSettings
from lnpo.json_files import read_json

DEFAULT_RUNS_ROOT = "runs"

RUN_JSON = "run.json"
EXPORT = "export"
ADAPTER = "adapter"
EVAL = "eval"
SUMMARY = "summary.json"
SAMPLES = "samples.jsonl"
SFT_SAMPLES = "sft_samples.jsonl"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
DONE = "DONE"
SWEEP_RUN = "sweep_run.json"
ERROR_LOG = "error.log"


# ----------------------------------------------------------------------------- one run's directory
def run_json(workdir: str) -> str:
    return os.path.join(workdir, RUN_JSON)


def export_dir(workdir: str) -> str:
    return os.path.join(workdir, EXPORT)


def adapter_dir(workdir: str) -> str:
    """A LoRA run's PEFT adapter (adapter_config.json + adapter_model.safetensors + tokenizer)."""
    return os.path.join(workdir, ADAPTER)


def eval_dir(workdir: str) -> str:
    return os.path.join(workdir, EVAL)


def summary_path(directory: str) -> str:
    """``<directory>/summary.json``: the run's summary in a workdir, the evaluation's in :func:`eval_dir`."""
    return os.path.join(directory, SUMMARY)


def eval_summary(workdir: str) -> str:
    return summary_path(eval_dir(workdir))


def samples_path(directory: str, *, sft: bool = False) -> str:
    """The evaluation's ``samples.jsonl`` (``sft``: ``sft_samples.jsonl``) in ``directory``."""
    return os.path.join(directory, SFT_SAMPLES if sft else SAMPLES)


def metrics_path(workdir: str) -> str:
    return os.path.join(workdir, METRICS)


def tensorboard_dir(workdir: str) -> str:
    return os.path.join(workdir, TENSORBOARD)


def checkpoints_dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINTS)


def done_marker(workdir: str) -> str:
    return os.path.join(workdir, DONE)


def sweep_run_record(workdir: str) -> str:
    return os.path.join(workdir, SWEEP_RUN)


def error_log(workdir: str) -> str:
    return os.path.join(workdir, ERROR_LOG)


# ----------------------------------------------------------------------------- what runs share
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


def embedded_task_dir(config) -> str:
    """The embedded task's files, shared by every run under the runs root with the same task version and seed:
    ``embedded_task/seed<s>`` (version 1) or ``embedded_task/v<version>-seed<s>``."""
    version = config.data.get("embedded_version", 1)
    prefix = "" if version == 1 else f"v{version}-"
    return os.path.join(runs_root(config), "embedded_task", f"{prefix}seed{embedded_seed(config)}")


def reference_cache_dir(config) -> str:
    return config.reference.cache_dir or os.path.join(runs_root(config), "reference_cache")


def sft_samples_dir(config) -> str:
    """The SFT model's evaluation samples, shared by the runs under the runs root
    (:mod:`lnpo.evaluate.sample_cache`)."""
    return os.path.join(runs_root(config), "sft_samples")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def embedded_sft_workdir(config) -> str:
    """``runs/sft-embedded-<hash>``: one cached SFT model per (tiny model, SFT recipe, data, seed, mesh, task
    version)."""
    from lnpo import parallel  # JAX: imported only by the run that trains the embedded model, not by readers

    recipe = {
        "tiny": config.model.tiny.to_dict(),
        "sft": config.sft.to_dict(),
        "data": {k: config.data[k] for k in ("max_prompt_len", "max_len", "truncation")},
        "seed": embedded_seed(config),
        "mesh": list(parallel.mesh_shape_of(config.mesh)),
    }
    if config.data.get("embedded_version", 1) != 1:  # version 1's key (and cached model) stays as it was
        recipe["embedded_version"] = config.data.embedded_version
    return os.path.join(runs_root(config), f"sft-embedded-{_digest(recipe)}")


def is_embedded_sft_workdir(path: str) -> bool:
    """Whether ``path`` names an embedded SFT model's workdir (:func:`embedded_sft_workdir`)."""
    return os.path.basename(os.path.normpath(path)).startswith("sft-embedded-")


@dataclasses.dataclass(frozen=True)
class StagePaths:
    """Where a stage reads and writes besides its workdir, resolved by :mod:`lnpo.train.run`."""

    runs_root: str  # memoized weight hashes (lnpo.train.reference_cache.weights_fingerprint)
    embedded_task: str  # the embedded task's files (read only when the config uses them)
    reference_cache: str

    @classmethod
    def for_config(cls, config) -> StagePaths:
        return cls(runs_root=runs_root(config), embedded_task=embedded_task_dir(config),
                   reference_cache=reference_cache_dir(config))


# ----------------------------------------------------------------------------- run.json
@dataclasses.dataclass(frozen=True)
class RunInfo:
    """``run.json``: what a trained run is, for the evaluator, the sweep and the report.

    ``export``/``sft_path``: absolute model directories (None: not exported / no SFT model);
    ``eval_prompts``: the OOD prompts file; ``scorer``: a :func:`lnpo.evaluate.make_scorer` spec ("" = none);
    ``eval``: :class:`~lnpo.eval_settings.EvalSettings`; ``status``: ``trained`` or ``failed`` (with ``error``).
    """

    name: str = ""
    stage: str = "po"
    method: str = ""
    loss: dict = dataclasses.field(default_factory=dict)
    lr: float | None = None
    seed: int = 0
    steps: int | None = None
    export: str | None = None
    sft_path: str | None = None
    chat_template: str = ""
    eval_prompts: str = ""
    scorer: str = ""
    eval: EvalSettings = EvalSettings()
    status: str = "trained"
    error: str | None = None
    adapter: str | None = None  # a LoRA run's PEFT adapter directory (absolute)

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["eval"] = self.eval.to_json()
        if out["error"] is None:
            del out["error"]
        if out["adapter"] is None:
            del out["adapter"]
        return out

    @classmethod
    def from_json(cls, data: dict, *, where: str = RUN_JSON) -> RunInfo:
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in known}
        fields["eval"] = EvalSettings.from_json(data.get("eval"), where=f"{where} eval")
        return cls(**fields)

    def replace(self, **changes) -> RunInfo:
        return dataclasses.replace(self, **changes)


def read_run_json(workdir: str) -> dict | None:
    """``workdir/run.json`` as a plain dict; None when it is missing or not valid JSON (sweep and report
    bookkeeping, which treat such a run as not trained)."""
    try:
        with open(run_json(workdir), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_run_info(workdir: str) -> RunInfo:
    """``workdir/run.json`` as a :class:`RunInfo`: :class:`~lnpo.errors.InputNotFound` when missing,
    :class:`~lnpo.errors.CheckpointError` naming the file when it is not a valid JSON object."""
    path = run_json(workdir)
    data = read_json(path, missing=InputNotFound, invalid=CheckpointError, needed_by="a trained workdir has run.json")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return RunInfo.from_json(data, where=path)


def write_run_info(workdir: str, info: RunInfo | dict) -> str:
    """Write ``workdir/run.json`` atomically (a temporary file renamed into place); returns its path."""
    path = run_json(workdir)
    data = info.to_json() if isinstance(info, RunInfo) else info
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
    return path
