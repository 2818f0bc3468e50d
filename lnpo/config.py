"""Config validation: every check runs before any model is built or compiled.

Each failure raises :class:`ConfigError` with one line naming the config field,
the offending value and what is allowed, e.g.::

    config.loss.beta: must be > 0, got -1.0
"""

from __future__ import annotations

import math
import os

import ml_collections

from lnpo.errors import ConfigError

STAGES = ("sft", "po", "rm")
LAYOUTS = ("padded", "packed", "shared_prompt")
TRUNCATIONS = ("keep_end", "drop")
REFERENCE_MODES = ("cache", "in_step")
DTYPES = ("float32", "bfloat16")
REMAT = ("none", "full", "dots")


def _choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"config.{field}: {value!r} is not one of {', '.join(map(str, allowed))}")


def check_positive(field: str, value, *, integer: bool = False, allow_zero: bool = False) -> None:
    """ConfigError naming ``config.<field>`` unless ``value`` is a finite number > 0 (>= 0 with
    ``allow_zero``; a whole number with ``integer``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config.{field}: must be {kind} {bound}, got {value!r}")


def _check_attention(config: ml_collections.ConfigDict) -> None:
    """The attention kernel: the model's own rule (``lnpo.models.config.attention_problem``), and
    cuDNN only where the run's devices are NVIDIA GPUs, splash only on TPUs."""
    import jax

    from lnpo.models.config import attention_problem

    m = config.model
    problem = attention_problem(m.attn_implementation, m.compute_dtype, m.attn_query_chunk)
    if problem:
        raise ConfigError(f"config.model.attn_implementation: {problem}")
    if m.attn_implementation == "cudnn" and jax.devices()[0].platform != "gpu":
        raise ConfigError(f"config.model.attn_implementation: 'cudnn' needs NVIDIA GPUs; this run's devices are "
                          f"{jax.devices()[0].platform}; use 'xla'")
    if m.attn_implementation == "splash" and jax.devices()[0].platform != "tpu":
        raise ConfigError(f"config.model.attn_implementation: 'splash' needs TPUs; this run's devices are "
                          f"{jax.devices()[0].platform}; use 'xla'")


def _check_context(config: ml_collections.ConfigDict, context: int) -> None:
    """A context axis splits every row's positions evenly (einsum or splash attention)."""
    if context == 1:
        return
    from lnpo.train.trainer import row_length

    length = row_length(config)
    if length % context:
        raise ConfigError(f"config.mesh.shape: the context axis ({context}) must divide the row length {length} "
                          f"(data.seq_len, else data.max_len, doubled for shared_prompt)")
    if config.model.attn_implementation == "cudnn":
        raise ConfigError(f"config.model.attn_implementation: {config.model.attn_implementation!r} does not split a "
                          f"row over the context axis ({context}); use 'xla'")


def model_runtime(config: ml_collections.ConfigDict) -> dict:
    """How the run builds its model (``lnpo.models.config.RUNTIME_FIELDS`` from ``config.model``:
    dtypes, remat, attention), the same for a fresh, a loaded and a planned model."""
    from lnpo.models.config import RUNTIME_FIELDS

    return {name: config.model[name] for name in RUNTIME_FIELDS}


def loss_hparams(config: ml_collections.ConfigDict) -> dict:
    """The objective's hyperparameters: every field of ``config.loss`` but ``name``."""
    return {k: v for k, v in config.loss.items() if k != "name"}


def validate(config: ml_collections.ConfigDict, *, num_devices: int) -> tuple[int, ...]:
    """Check ``config`` for ``num_devices`` devices; returns the resolved mesh shape."""
    from lnpo import losses, parallel

    _choice("stage", config.stage, STAGES)
    if config.stage == "po":
        names = losses.names()
        if config.loss.name not in names:
            raise ConfigError(f"config.loss.name: unknown objective {config.loss.name!r}; valid: {', '.join(names)}")
        try:
            losses.validate(config.loss.name, loss_hparams(config))
        except ValueError as e:
            raise ConfigError(f"config.loss: {e}") from None
    _choice("model.param_dtype", config.model.param_dtype, DTYPES)
    _choice("model.compute_dtype", config.model.compute_dtype, DTYPES)
    _choice("model.remat", config.model.remat, REMAT)
    _check_attention(config)
    _choice("reference.mode", config.reference.mode, REFERENCE_MODES)
    _choice("reference.dtype", config.reference.dtype, DTYPES)
    _choice("data.layout", config.data.layout, LAYOUTS)
    _choice("data.truncation", config.data.truncation, TRUNCATIONS)
    if config.model.path:
        if not os.path.isdir(config.model.path):
            raise ConfigError(f"config.model.path: {config.model.path!r} is not a directory")
        if not os.path.isfile(os.path.join(config.model.path, "config.json")):
            raise ConfigError(f"config.model.path: {config.model.path!r} has no config.json")
    for field in ("train.steps", "train.global_batch", "train.micro_batches", "train.log_every",
                  "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.logprob_chunk", "data.max_prompt_len", "data.max_len", "sft.steps",
                  "sft.global_batch"):
        section, key = field.split(".")
        check_positive(field, config[section][key], integer=True)
    check_positive("train.eval_batches", config.train.eval_batches, integer=True, allow_zero=True)
    check_positive("optim.lr", config.optim.lr)
    check_positive("sft.lr", config.sft.lr)
    check_positive("optim.warmup_steps", config.optim.warmup_steps, integer=True, allow_zero=True)
    check_positive("optim.weight_decay", config.optim.weight_decay, allow_zero=True)
    check_positive("optim.clip_norm", config.optim.clip_norm, allow_zero=True)
    check_positive("data.seq_len", config.data.seq_len, integer=True, allow_zero=True)
    check_positive("model.attn_query_chunk", config.model.attn_query_chunk, integer=True, allow_zero=True)
    if config.data.seq_len and config.data.seq_len < config.data.max_len:
        raise ConfigError(f"config.data.seq_len: {config.data.seq_len} must be >= data.max_len ({config.data.max_len})")
    if config.data.max_prompt_len >= config.data.max_len:
        raise ConfigError(
            f"config.data.max_prompt_len: {config.data.max_prompt_len} must be < data.max_len ({config.data.max_len})"
        )
    try:
        mesh_shape = parallel.resolve_mesh_shape(config.mesh.shape, num_devices)
    except ValueError as e:
        raise ConfigError(f"config.mesh.shape: {e}") from None
    _check_context(config, parallel.full_mesh_shape(mesh_shape)[3])
    data_parallel = mesh_shape[0] * mesh_shape[1]
    batch, micro = config.train.global_batch, config.train.micro_batches
    if batch % micro:
        raise ConfigError(f"config.train.global_batch: {batch} is not divisible by train.micro_batches ({micro})")
    if (batch // micro) % data_parallel:
        raise ConfigError(
            f"config.train.global_batch: {batch} / micro_batches {micro} = {batch // micro} per micro-batch is not "
            f"divisible by the data-parallel size {data_parallel} (mesh data x fsdp)"
        )
    return mesh_shape
