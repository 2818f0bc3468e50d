"""Hugging Face ``config.json`` <-> ``ModelConfig`` fields, for the seven supported families.

:func:`fields_from_hf` maps a ``config.json`` dict onto ``ModelConfig``'s keyword arguments (one
``ValueError`` naming the field and value for anything unsupported); :func:`fields_to_hf` maps a
config back. This module owns HF's vocabularies (model types, layer types, rope types, activation
names, class names) and knows nothing of the dataclass (``lnpo.models.config`` calls it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from lnpo.errors import InputNotFound, ModelError
from lnpo.json_files import read_json

SUPPORTED_MODEL_TYPES = ("gemma", "gemma2", "llama", "mistral", "phi3", "qwen2", "qwen3")
LAYER_TYPES = ("full_attention", "sliding_attention")
ROPE_TYPES = ("linear", "llama3", "longrope")

_HF_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}
_ACTIVATION_TO_HF = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "relu": "relu"}

# HF class defaults for fields a config.json may omit (transformers writes only
# the difference to these in some versions). Sizes are never defaulted.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
    "mistral": dict(hidden_act="silu", max_position_embeddings=131072, rms_norm_eps=1e-6,
                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, sliding_window=4096),
    "qwen2": dict(hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, sliding_window=4096, max_window_layers=28),
    "qwen3": dict(hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, sliding_window=4096, max_window_layers=28, head_dim=128),
    "gemma": dict(hidden_act="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0, head_dim=256),
    "gemma2": dict(hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6,
                   tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0, head_dim=256,
                   sliding_window=4096, query_pre_attn_scalar=256, final_logit_softcapping=30.0,
                   attn_logit_softcapping=50.0),
    "phi3": dict(hidden_act="silu", max_position_embeddings=4096, rms_norm_eps=1e-5,
                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000, pad_token_id=32000),
}

_CAUSAL_LM_ARCH = {
    "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM", "phi3": "Phi3ForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_SEQ_CLS_ARCH = {k: v.replace("ForCausalLM", "ForSequenceClassification") for k, v in _CAUSAL_LM_ARCH.items()}


def config_json_error(field: str, value: Any, why: str) -> ValueError:
    """``config.json: <field> <value> <why>``."""
    return ValueError(f"config.json: {field} {value!r} {why}")


def architecture(model_type: str, num_labels: int) -> str:
    """The transformers class name: ``<Family>ForCausalLM``, or ``ForSequenceClassification`` with labels."""
    table = _SEQ_CLS_ARCH if num_labels > 0 else _CAUSAL_LM_ARCH
    if model_type not in table:
        raise config_json_error("model_type", model_type,
                                f"is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return table[model_type]


def _get(hf: dict, family: str, key: str, default: Any = None) -> Any:
    if key in hf and hf[key] is not None:
        return hf[key]
    return _FAMILY_DEFAULTS[family].get(key, default)


def _token_id(hf: dict, family: str, key: str) -> Any:
    """Special-token ids: an explicit null means "none", an absent key the family default."""
    return hf[key] if key in hf else _FAMILY_DEFAULTS[family].get(key)


def _require(hf: dict, key: str) -> Any:
    if key not in hf or hf[key] is None:
        raise config_json_error(key, None, "is required (missing from config.json)")
    return hf[key]


def _rope_from_hf(hf: dict, family: str) -> tuple[float, dict | None, float]:
    """-> (rope_theta, rope_scaling as ``RopeScaling`` keyword arguments or None, partial_rotary_factor)
    from old or new HF keys."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise config_json_error("rope_parameters", params or scaling, "must be a dict")
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", hf.get("rope_theta", 10000.0))
    partial = merged.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) or 1.0
    if float(partial) != 1.0 and family != "phi3":
        raise config_json_error("partial_rotary_factor", partial, f"is not supported for model_type {family!r}")
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    if family == "phi3" and rope_type in ("su", "yarn"):
        rope_type = "longrope"  # transformers' Phi-3 backward compatibility
    if rope_type == "default":
        return float(theta), None, float(partial)
    if rope_type not in ROPE_TYPES:
        raise config_json_error("rope_scaling.rope_type", rope_type,
                                f"is not supported; supported: default, {', '.join(ROPE_TYPES)}")
    if rope_type == "longrope" and family != "phi3":
        raise config_json_error("rope_scaling.rope_type", rope_type,
                                f"is not supported for model_type {family!r} (only phi3)")
    orig = merged.get("original_max_position_embeddings", hf.get("original_max_position_embeddings"))
    tup = lambda v: None if v is None else tuple(float(x) for x in v)  # noqa: E731
    fl = lambda v: None if v is None else float(v)  # noqa: E731
    rs = dict(
        rope_type=rope_type,
        factor=fl(merged.get("factor")),
        low_freq_factor=fl(merged.get("low_freq_factor")),
        high_freq_factor=fl(merged.get("high_freq_factor")),
        original_max_position_embeddings=None if orig is None else int(orig),
        short_factor=tup(merged.get("short_factor")),
        long_factor=tup(merged.get("long_factor")),
        attention_factor=fl(merged.get("attention_factor")),
    )
    return float(theta), rs, float(partial)


def _family_of(hf: dict) -> tuple[str, bool]:
    """``(model_type, is a sequence classifier)``; ValueError for a family, quantization, attention or
    architecture lnpo does not implement."""
    family = hf.get("model_type")
    if family not in SUPPORTED_MODEL_TYPES:
        raise config_json_error("model_type", family,
                                f"is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if hf.get("quantization_config"):
        raise config_json_error("quantization_config", hf["quantization_config"].get("quant_method", "?"),
                                "is not supported (unquantized checkpoints only)")
    if hf.get("use_bidirectional_attention"):
        raise config_json_error("use_bidirectional_attention", hf["use_bidirectional_attention"],
                                "is not supported (causal decoders only)")
    archs = hf.get("architectures") or []
    is_cls = any(a.endswith("ForSequenceClassification") for a in archs)
    for a in archs:
        if a not in (_CAUSAL_LM_ARCH[family], _SEQ_CLS_ARCH[family]):
            raise config_json_error("architectures", a,
                                    f"is not supported; supported: {_CAUSAL_LM_ARCH[family]}, {_SEQ_CLS_ARCH[family]}")
    return family, is_cls


def _activation_from_hf(hf: dict, family: str) -> str:
    """Our activation name for the family's HF activation key."""
    if family == "gemma2":
        act_name = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    elif family == "gemma":
        act_name = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
        if act_name == "gelu":  # transformers maps Gemma's legacy "gelu" to the tanh approximation
            act_name = "gelu_pytorch_tanh"
    else:
        act_name = _get(hf, family, "hidden_act")
    if act_name not in _HF_ACTIVATIONS:
        raise config_json_error("hidden_act", act_name, f"is not supported; supported: {', '.join(_HF_ACTIVATIONS)}")
    return _HF_ACTIVATIONS[act_name]


def _attention_layout_from_hf(hf: dict, family: str, num_layers: int) -> tuple[int | None, tuple | None]:
    """``(sliding_window, layer_types)`` from the family's sliding-window keys (None, None: all full)."""
    sliding_window = None
    layer_types = None
    if family in ("mistral", "phi3"):
        sliding_window = hf.get("sliding_window") if "sliding_window" in hf else _get(hf, family, "sliding_window")
        if sliding_window is not None:
            layer_types = ("sliding_attention",) * num_layers
    elif family in ("qwen2", "qwen3"):
        if hf.get("use_sliding_window"):
            sliding_window = _get(hf, family, "sliding_window")
            lt = hf.get("layer_types")
            if lt is None:
                mwl = int(_get(hf, family, "max_window_layers"))
                lt = ["sliding_attention" if i >= mwl else "full_attention" for i in range(num_layers)]
            layer_types = tuple(lt)
        elif hf.get("layer_types") and "sliding_attention" in hf["layer_types"]:
            raise config_json_error("layer_types", hf["layer_types"],
                                    "uses sliding_attention but use_sliding_window is false")
    elif family == "gemma2":
        sliding_window = _get(hf, family, "sliding_window")
        lt = hf.get("layer_types")
        if lt is None:
            lt = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)]
        layer_types = tuple(lt)
    if layer_types is not None:
        if len(layer_types) != num_layers:
            raise config_json_error("layer_types", list(layer_types),
                                    f"must have num_hidden_layers={num_layers} entries")
        for t in layer_types:
            if t not in LAYER_TYPES:
                raise config_json_error("layer_types", t, f"is not supported; supported: {', '.join(LAYER_TYPES)}")
        if "sliding_attention" in layer_types and not sliding_window:
            raise config_json_error("sliding_window", sliding_window,
                                    "must be a positive integer for sliding_attention layers")
    if sliding_window is not None and "sliding_attention" not in (layer_types or ()):
        sliding_window = None
    return None if sliding_window is None else int(sliding_window), layer_types


def fields_from_hf(hf: Mapping[str, Any]) -> dict:
    """``ModelConfig`` keyword arguments for an HF ``config.json`` dict (``rope_scaling`` as a dict of
    ``RopeScaling`` arguments); one ValueError naming the field and value for anything unsupported."""
    hf = dict(hf)
    family, is_cls = _family_of(hf)
    hidden = int(_require(hf, "hidden_size"))
    heads = int(_require(hf, "num_attention_heads"))
    kv_heads = int(hf.get("num_key_value_heads") or heads)
    head_dim = _get(hf, family, "head_dim") or hidden // heads
    theta, rope_scaling, partial = _rope_from_hf(hf, family)
    activation = _activation_from_hf(hf, family)
    num_layers = int(_require(hf, "num_hidden_layers"))
    sliding_window, layer_types = _attention_layout_from_hf(hf, family, num_layers)

    attention_bias = bool(hf.get("attention_bias", False))
    eos = _token_id(hf, family, "eos_token_id")
    num_labels = 0
    if is_cls:
        num_labels = int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2)

    fields = dict(
        model_type=family,
        vocab_size=int(_require(hf, "vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(_require(hf, "intermediate_size")),
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(head_dim),
        rope_theta=theta,
        rope_scaling=rope_scaling,
        partial_rotary_factor=partial,
        max_position_embeddings=int(_get(hf, family, "max_position_embeddings")),
        rms_norm_eps=float(_get(hf, family, "rms_norm_eps")),
        norm_plus_one=family in ("gemma", "gemma2"),
        post_norms=family == "gemma2",
        qk_norm=family == "qwen3",
        qkv_bias=True if family == "qwen2" else (attention_bias and family in ("llama", "qwen3", "gemma", "gemma2")),
        o_bias=attention_bias and family in ("llama", "qwen3", "gemma", "gemma2"),
        mlp_bias=bool(hf.get("mlp_bias", False)) and family == "llama",
        activation=activation,
        tie_embeddings=bool(_get(hf, family, "tie_word_embeddings")),
        embed_scale=family in ("gemma", "gemma2"),
        final_logit_softcap=_get(hf, family, "final_logit_softcapping") if family == "gemma2" else None,
        num_labels=num_labels,
        sliding_window=sliding_window,
        layer_types=layer_types,
        attn_logit_softcap=_get(hf, family, "attn_logit_softcapping") if family == "gemma2" else None,
        query_pre_attn_scalar=float(_get(hf, family, "query_pre_attn_scalar")) if family == "gemma2" else None,
        fused_qkv=family == "phi3",
        fused_gate_up=family == "phi3",
        bos_token_id=_token_id(hf, family, "bos_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        pad_token_id=_token_id(hf, family, "pad_token_id"),
        initializer_range=float(hf.get("initializer_range", 0.02)),
    )
    for k in ("final_logit_softcap", "attn_logit_softcap"):
        if fields[k] is not None:
            fields[k] = float(fields[k])
    return fields


def fields_to_hf(c) -> dict:
    """The HF ``config.json`` dict of ``c`` (a ``ModelConfig``), before the round-trip check of
    ``ModelConfig.to_hf``."""
    fam = c.model_type
    if fam not in SUPPORTED_MODEL_TYPES:
        raise config_json_error("model_type", fam, f"is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling is not None:
        rope_parameters = {**c.rope_scaling.to_hf(), "rope_theta": c.rope_theta}
    if fam == "phi3":
        rope_parameters["partial_rotary_factor"] = c.partial_rotary_factor
    hf: dict[str, Any] = {
        "architectures": [architecture(c.model_type, c.num_labels)],
        "model_type": fam,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_embeddings,
        "initializer_range": c.initializer_range,
        # both the transformers>=5 key and the older pair, so either version loads it
        "rope_parameters": rope_parameters,
        "rope_theta": c.rope_theta,
        "rope_scaling": c.rope_scaling.to_hf() if c.rope_scaling is not None else None,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "dtype": c.param_dtype,
        "torch_dtype": c.param_dtype,
        "use_cache": True,
    }
    hf["hidden_activation" if fam == "gemma2" else "hidden_act"] = _ACTIVATION_TO_HF[c.activation]
    if fam in ("llama", "qwen3", "gemma", "gemma2"):
        hf["attention_bias"] = c.o_bias
    if fam == "llama":
        hf["mlp_bias"] = c.mlp_bias
    sliding = "sliding_attention" in c.layer_types
    if fam in ("mistral", "phi3"):
        hf["sliding_window"] = c.sliding_window if sliding else None
    if fam in ("qwen2", "qwen3"):
        hf["use_sliding_window"] = sliding
        hf["sliding_window"] = c.sliding_window if sliding else None
        hf["layer_types"] = list(c.layer_types)
        first = [i for i, t in enumerate(c.layer_types) if t == "sliding_attention"]
        hf["max_window_layers"] = first[0] if first else c.num_layers
    if fam == "gemma2":
        hf["sliding_window"] = c.sliding_window if sliding else 4096
        hf["layer_types"] = list(c.layer_types)
        q = c.query_pre_attn_scalar
        hf["query_pre_attn_scalar"] = int(q) if q is not None and float(q).is_integer() else q
        hf["final_logit_softcapping"] = c.final_logit_softcap
        hf["attn_logit_softcapping"] = c.attn_logit_softcap
    if fam == "phi3":
        hf["partial_rotary_factor"] = c.partial_rotary_factor
        if c.rope_scaling is not None and c.rope_scaling.original_max_position_embeddings:
            hf["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings
    if c.num_labels > 0:
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.num_labels)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(c.num_labels)}
        hf["num_labels"] = c.num_labels
    return hf


def read_config(path: str) -> dict:
    """The parsed ``<path>/config.json`` of a Hugging Face model directory; a missing directory or file is
    an :class:`~lnpo.errors.InputNotFound` and invalid JSON a :class:`~lnpo.errors.ModelError`, each
    naming the path."""
    if not os.path.isdir(path):
        raise InputNotFound(f"{path}: no such model directory")
    return read_json(os.path.join(path, "config.json"), missing=InputNotFound, invalid=ModelError,
                     needed_by="a Hugging Face model directory needs config.json")
