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
from lnpo.implied import data_parallel, row_length, tiny_model_config
from lnpo.train import stages

REFERENCE_MODES = ("cache", "in_step", "base")  # base: LoRA only
# Parameter, compute and in-step reference dtypes; float16 is not offered (lnpo trains without loss scaling).
TRAINING_DTYPES = ("float32", "bfloat16")
# The other choice lists are declared by the modules that own them: data.layout (lnpo.data.layouts.LAYOUTS),
# data.truncation (lnpo.data.tokenize.TRUNCATIONS), model.remat (lnpo.models.config.REMAT_POLICIES),
# train.export_dtype ("" = the starting model's own dtype, or one of lnpo.models.config.DTYPES),
# optim.schedule (lnpo.train.optim.SCHEDULES).


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
    """A context axis splits every row's positions evenly (einsum, ring or splash attention)."""
    if context == 1:
        return
    length = row_length(config)
    if length % context:
        field = "mesh.shape" if config.mesh.get("shape") else "mesh.context"
        raise ConfigError(f"config.{field}: the context axis ({context}) must divide the row length {length} "
                          f"(data.seq_len, else data.max_len, doubled for shared_prompt)")
    if config.model.attn_implementation == "cudnn":
        raise ConfigError(f"config.model.attn_implementation: {config.model.attn_implementation!r} does not split a "
                          f"row over the context axis ({context}); use 'xla' or 'ring'")
    chunk = config.model.attn_query_chunk
    if config.model.attn_implementation == "ring" and 0 < chunk < length // context and (length // context) % chunk:
        raise ConfigError(f"config.model.attn_query_chunk: with 'ring' attention it must divide each context "
                          f"shard's {length // context} positions (row length {length} / context {context}), "
                          f"got {chunk}")


def check_unit_interval(field: str, value) -> None:
    """ConfigError naming ``config.<field>`` unless ``0 <= value < 1`` (an Adam decay rate)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and 0 <= value < 1):
        raise ConfigError(f"config.{field}: must be a number in [0, 1), got {value!r}")


def _check_optimizer(config: ml_collections.ConfigDict) -> None:
    from lnpo.train.optim import SCHEDULES

    o = config.optim
    _choice("optim.schedule", o.schedule, SCHEDULES)
    check_unit_interval("optim.b1", o.b1)
    check_unit_interval("optim.b2", o.b2)
    check_positive("optim.eps", o.eps)
    check_positive("optim.lr", o.lr)
    check_positive("optim.warmup_steps", o.warmup_steps, integer=True, allow_zero=True)
    check_positive("optim.weight_decay", o.weight_decay, allow_zero=True)
    check_positive("optim.clip_norm", o.clip_norm, allow_zero=True)
    check_positive("sft.lr", config.sft.lr)
    check_positive("sft.warmup_steps", config.sft.warmup_steps, integer=True, allow_zero=True)
    for field in ("seed", "eval.seed"):
        section, _, key = field.rpartition(".")
        check_positive(field, (config[section] if section else config)[key], integer=True, allow_zero=True)


def _check_tiny_model(config: ml_collections.ConfigDict) -> None:
    """``config.model.tiny`` (the embedded model's architecture): whole sizes > 0 that make a model lnpo can
    build and export; checked before any data is loaded."""
    t = config.model.tiny
    for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
        check_positive(f"model.tiny.{key}", t[key], integer=True)
    if t.hidden_size % t.num_heads:
        raise ConfigError(f"config.model.tiny.num_heads: {t.num_heads} does not divide model.tiny.hidden_size "
                          f"({t.hidden_size})")
    if t.num_heads % t.num_kv_heads:
        raise ConfigError(f"config.model.tiny.num_kv_heads: {t.num_kv_heads} does not divide model.tiny.num_heads "
                          f"({t.num_heads})")
    if (t.hidden_size // t.num_heads) % 2:
        raise ConfigError(f"config.model.tiny.num_heads: head size hidden_size / num_heads = "
                          f"{t.hidden_size // t.num_heads} must be even (rotary embeddings)")
    try:
        tiny_model_config(config, vocab_size=256).to_hf()
    except ValueError as e:
        raise ConfigError(f"config.model.tiny: {str(e).replace('ModelConfig', 'the tiny model')}") from None


def _check_lora(config: ml_collections.ConfigDict) -> None:
    """``config.model.lora`` (lnpo.models.lora.check_config) and how it fits the stage and the reference."""
    from lnpo import losses
    from lnpo.models.lora import check_config

    lora = config.model.lora
    check_config(lora)
    if not lora.rank:
        if config.reference.mode == "base":
            raise ConfigError("config.reference.mode: 'base' (the base with the adapters off) needs LoRA: "
                              "set model.lora.rank > 0, or use 'cache' / 'in_step'")
        return
    stage = stages.get(config.stage)
    if stage.num_labels:
        raise ConfigError("config.model.lora.rank: LoRA trains the sft and po stages; a reward model trains whole "
                          "(set model.lora.rank=0)")
    if (stage.objective and losses.requires_reference(config.loss.name)
            and config.reference.mode != "base"):
        raise ConfigError(f"config.reference.mode: a LoRA run's reference is the base with the adapters off: set "
                          f"'base', not {config.reference.mode!r}")


def _check_data(config: ml_collections.ConfigDict) -> None:
    from lnpo.data.adapters import PKU_PREFERENCES
    from lnpo.data.sources import PREFERENCE_COLUMNS, SFT_COLUMNS

    d = config.data
    _choice("data.pku_preference", d.pku_preference, tuple(PKU_PREFERENCES))
    allowed = SFT_COLUMNS if stages.get(config.stage).examples == "sft" else PREFERENCE_COLUMNS
    for key, column in d.columns.items():
        if not isinstance(column, str):
            raise ConfigError(f"config.data.columns.{key}: must be a column name (a string), got {column!r}")
        if column and key not in allowed:
            raise ConfigError(f"config.data.columns.{key}: not an input column of {config.stage} data; "
                              f"allowed: {', '.join(allowed)}")
    if data_columns(config) and d.source == "embedded":
        raise ConfigError(f"config.data.columns.{next(iter(data_columns(config)))}: a column mapping needs data.source "
                          "to be your data (the embedded task's columns are already canonical)")
    template = d.chat_template
    if not isinstance(template, str) or template not in ("", "plain") and "{content}" not in template:
        raise ConfigError(f"config.data.chat_template: {template!r} is not '' (the tokenizer's chat template), "
                          "'plain' (lnpo's plain-text template) or a user-turn format containing '{content}'")


def data_columns(config: ml_collections.ConfigDict) -> dict:
    """The column mapping of ``config.data.columns``: canonical column -> source column, set fields only."""
    return {key: column for key, column in config.data.columns.items() if column}


def loss_hparams(config: ml_collections.ConfigDict) -> dict:
    """The objective's hyperparameters: every field of ``config.loss`` but ``name``."""
    return {k: v for k, v in config.loss.items() if k != "name"}


def validate(config: ml_collections.ConfigDict, *, num_devices: int) -> tuple[int, ...]:
    """Check ``config`` for ``num_devices`` devices; returns the resolved mesh shape."""
    from lnpo import losses, parallel
    from lnpo.data.layouts import LAYOUTS
    from lnpo.data.tokenize import TRUNCATIONS
    from lnpo.models.config import DTYPES, REMAT_POLICIES

    if stages.get(config.stage).objective:  # a ConfigError naming the stages for an unknown one
        names = losses.names()
        if config.loss.name not in names:
            raise ConfigError(f"config.loss.name: unknown objective {config.loss.name!r}; valid: {', '.join(names)}")
        try:
            losses.validate(config.loss.name, loss_hparams(config))
        except ValueError as e:
            raise ConfigError(f"config.loss: {e}") from None
        if "sampled" in losses.needs(config.loss.name) and config.reference.mode == "cache":
            raise ConfigError(f"config.reference.mode: {config.loss.name} re-draws its tokens every step, so its "
                              f"reference must run in the step: set 'in_step', not {config.reference.mode!r}")
    _choice("model.param_dtype", config.model.param_dtype, TRAINING_DTYPES)
    _choice("model.compute_dtype", config.model.compute_dtype, TRAINING_DTYPES)
    _choice("model.remat", config.model.remat, REMAT_POLICIES)
    _check_attention(config)
    _choice("reference.mode", config.reference.mode, REFERENCE_MODES)
    _check_lora(config)
    _choice("reference.dtype", config.reference.dtype, TRAINING_DTYPES)
    _choice("data.layout", config.data.layout, LAYOUTS)
    _choice("data.truncation", config.data.truncation, TRUNCATIONS)
    _check_data(config)
    _choice("train.export_dtype", config.train.export_dtype, ("", *DTYPES))
    _check_optimizer(config)
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
    check_positive("data.seq_len", config.data.seq_len, integer=True, allow_zero=True)
    check_positive("model.attn_query_chunk", config.model.attn_query_chunk, integer=True, allow_zero=True)
    if config.data.seq_len and config.data.seq_len < config.data.max_len:
        raise ConfigError(f"config.data.seq_len: {config.data.seq_len} must be >= data.max_len ({config.data.max_len})")
    if config.data.max_prompt_len >= config.data.max_len:
        raise ConfigError(
            f"config.data.max_prompt_len: {config.data.max_prompt_len} must be < data.max_len ({config.data.max_len})"
        )
    if not config.model.path:
        _check_tiny_model(config)
    try:
        mesh_shape = parallel.resolve_mesh_shape(parallel.mesh_shape_of(config.mesh), num_devices)
    except ConfigError as e:
        if str(e).startswith("config."):
            raise
        field = "mesh.shape" if config.mesh.get("shape") else "mesh"
        raise ConfigError(f"config.{field}: {e}") from None
    _check_context(config, parallel.full_mesh_shape(mesh_shape)[3])
    dp = data_parallel(dict(zip(parallel.MESH_AXES, parallel.full_mesh_shape(mesh_shape))))
    batch, micro = config.train.global_batch, config.train.micro_batches
    if batch % micro:
        raise ConfigError(f"config.train.global_batch: {batch} is not divisible by train.micro_batches ({micro})")
    if (batch // micro) % dp:
        raise ConfigError(
            f"config.train.global_batch: {batch} / micro_batches {micro} = {batch // micro} per micro-batch is not "
            f"divisible by the data-parallel size {dp} (mesh data x fsdp)"
        )
    return mesh_shape
