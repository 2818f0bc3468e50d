"""``ModelConfig``: one frozen dataclass describing every supported decoder family.

The switches cover Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5, Qwen3, Gemma, Gemma 2
and Phi-3. ``ModelConfig.from_hf(config_json_dict)`` maps a Hugging Face
``config.json`` onto it (failing with one clear ``ValueError`` naming the field
and value for anything unsupported) and ``ModelConfig.to_hf()`` maps it back.

The config is hashable (it is static metadata of the NNX module), so every
container field is a tuple and rope scaling is its own frozen dataclass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lnpo.errors import ConfigError, ModelError

SUPPORTED_MODEL_TYPES = ("gemma", "gemma2", "llama", "mistral", "phi3", "qwen2", "qwen3")
ACTIVATIONS = ("silu", "gelu_tanh", "gelu", "relu")
REMAT_POLICIES = ("none", "full", "dots", "minimal", "dots_saveable", "dots_with_no_batch_dims_saveable")
DTYPES = ("float32", "bfloat16", "float16")
LAYER_TYPES = ("full_attention", "sliding_attention")
ATTN_IMPLEMENTATIONS = ("xla", "cudnn", "splash", "ring")
# How a model runs, not what it is: not in an HF config.json, set when a model is built or loaded.
RUNTIME_FIELDS = ("param_dtype", "compute_dtype", "remat", "attn_query_chunk", "attn_implementation")
ROPE_TYPES = ("linear", "llama3", "longrope")


def attention_problem(implementation: str, compute_dtype: str, query_chunk: int) -> str | None:
    """What is wrong with this attention choice whatever the model's sizes, or None (shared by
    ``ModelConfig`` and the run config's check, which prefix their field name)."""
    if implementation not in ATTN_IMPLEMENTATIONS:
        return f"{implementation!r} is not supported; supported: {', '.join(ATTN_IMPLEMENTATIONS)}"
    if implementation == "cudnn" and compute_dtype not in ("bfloat16", "float16"):
        return f"'cudnn' needs compute_dtype bfloat16 or float16, got {compute_dtype!r}"
    if implementation in ("cudnn", "splash") and query_chunk:
        return f"{implementation!r} never writes the scores; attn_query_chunk must be 0, got {query_chunk!r}"
    return None

# HF activation name -> ours.
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


def _err(field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"config.json: {field} {value!r} {why}")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling (HF ``rope_scaling`` / ``rope_parameters``).

    ``rope_type``: ``"linear"`` (positions / factor), ``"llama3"`` (Llama 3.1
    wavelength-banded scaling) or ``"longrope"`` (Phi-3 per-frequency short/long
    factors; long ones are used when a call's largest position + 1 exceeds
    ``original_max_position_embeddings``, exactly as transformers does).
    """

    rope_type: str
    factor: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    attention_factor: float | None = None

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise _err("rope_scaling.rope_type", self.rope_type, f"is not supported; supported: {', '.join(ROPE_TYPES)}")
        required = {
            "linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
            "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
        }[self.rope_type]
        for name in required:
            if getattr(self, name) is None:
                raise _err(f"rope_scaling.{name}", None, f"is required for rope_type {self.rope_type!r}")

    def to_hf(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        for k in ("short_factor", "long_factor"):
            if k in out:
                out[k] = list(out[k])
        return out


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every switch of the decoder. Sizes first, then family features.

    Attention layout: ``layer_types`` holds one of ``"full_attention"`` /
    ``"sliding_attention"`` per layer (None: every layer sliding when
    ``sliding_window`` is set, else every layer full). A sliding layer lets query
    q see key k only when ``positions[q] - positions[k] < sliding_window``.

    ``remat`` names the per-layer rematerialization policy: ``"none"`` (keep all
    activations), ``"full"`` (recompute the whole layer in the backward pass),
    ``"dots"`` / ``"minimal"`` (save only weight matmul outputs:
    ``dots_with_no_batch_dims_saveable``), ``"dots_saveable"`` (save every
    matmul output, attention scores included).

    ``attn_query_chunk`` > 0 runs attention over that many query positions at a
    time (recomputed chunk by chunk in the backward pass): it bounds the float32
    attention scores at ``[B, H, chunk, S]`` for less peak memory; 0 (default)
    attends all queries at once.

    ``attn_implementation`` picks the attention kernel of the training forward
    pass (no KV cache): ``"xla"`` (default) is lnpo's own einsum softmax
    attention, on every backend; ``"cudnn"`` is cuDNN's fused flash attention
    through ``jax.nn.dot_product_attention`` (NVIDIA GPUs, bf16/fp16 compute,
    head_dim a multiple of 8, <= 128 before Hopper, <= 256 from Hopper on): the
    causal part of the mask is its causal mode and the rest (segments, branches,
    windows) an additive bias, and the ``[B, H, T, S]`` scores are never written
    to memory. ``"splash"`` is the Pallas TPU splash-attention kernel
    (``lnpo.models.splash``: causal / local static masks with segment ids; shared-prompt
    branches as two key sets merged by log-sum-exp; GQA, soft-capping and any head_dim;
    not with sliding windows and branches together; off TPU it runs in Pallas' interpret
    mode). ``"ring"`` (``lnpo.models.ring``) is for a context mesh axis: each chip keeps its
    slice of a row and the keys and values go round the ring, one block at a time, with an
    online softmax (per chip ``[B, H, T/c, T/c]`` scores for one block instead of the
    all-gathered ``[B, H, T/c, T]``; with ``attn_query_chunk`` dividing ``T/c``, one chunk's
    ``[B, H, chunk, T/c]``); without a context axis it is ``"xla"``.
    Decoding with a KV cache always uses ``"xla"``. ``"cudnn"`` supports
    neither ``attn_logit_softcap`` nor ``attn_query_chunk``; ``"splash"`` not the latter.

    ``num_labels`` > 0 adds a sequence-classification score head
    ``[hidden, num_labels]`` (HF ``*ForSequenceClassification``) and drops the LM
    head.
    """

    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None  # None: hidden_size // num_heads
    model_type: str = "llama"  # HF family used by to_hf / save_pretrained
    # positions
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    partial_rotary_factor: float = 1.0  # fraction of head_dim that is rotated (Phi-3 family)
    max_position_embeddings: int = 2048
    # normalization / projections
    rms_norm_eps: float = 1e-6
    norm_plus_one: bool = False  # Gemma: x_norm * (1 + w), weights initialised to 0
    post_norms: bool = False  # Gemma 2: norms after attention and MLP outputs too
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    activation: str = "silu"  # gated MLP: down(act(gate(x)) * up(x))
    # embeddings / head
    tie_embeddings: bool = False
    embed_scale: bool = False  # Gemma: embeddings * sqrt(hidden_size) (in compute dtype)
    final_logit_softcap: float | None = None  # Gemma 2: cap * tanh(logits / cap)
    num_labels: int = 0
    # attention
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    attn_logit_softcap: float | None = None  # Gemma 2
    query_pre_attn_scalar: float | None = None  # scores scale = this ** -0.5 (default head_dim)
    # HF export layout (Phi-3 stores fused qkv_proj and gate_up_proj)
    fused_qkv: bool = False
    fused_gate_up: bool = False
    # special tokens
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # numerics / training
    initializer_range: float = 0.02
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: str = "none"
    attn_query_chunk: int = 0
    attn_implementation: str = "xla"

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.head_dim is None:
            set_("head_dim", self.hidden_size // self.num_heads)
        if isinstance(self.eos_token_id, list):
            set_("eos_token_id", tuple(self.eos_token_id))
        if self.layer_types is None:
            kind = "sliding_attention" if self.sliding_window else "full_attention"
            set_("layer_types", (kind,) * self.num_layers)
        else:
            set_("layer_types", tuple(self.layer_types))
        self._validate()

    def _validate(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"ModelConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"ModelConfig: num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"ModelConfig.activation {self.activation!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"ModelConfig.remat {self.remat!r} is not supported; supported: {', '.join(REMAT_POLICIES)}")
        if int(self.attn_query_chunk) < 0:
            raise ConfigError(f"ModelConfig.attn_query_chunk must be >= 0, got {self.attn_query_chunk!r}")
        problem = attention_problem(self.attn_implementation, self.compute_dtype, self.attn_query_chunk)
        if problem:
            raise ConfigError(f"ModelConfig.attn_implementation {problem}")
        if self.attn_implementation == "cudnn":
            if self.attn_logit_softcap is not None:
                raise ConfigError("ModelConfig.attn_implementation 'cudnn' does not support attn_logit_softcap "
                                 f"({self.attn_logit_softcap!r}); use 'xla'")
            if self.head_dim > 256 or self.head_dim % 8:
                raise ConfigError(f"ModelConfig.attn_implementation 'cudnn' needs head_dim <= 256 (128 before Hopper) "
                                 f"and a multiple of 8, got {self.head_dim}")
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"ModelConfig.{name} {getattr(self, name)!r} is not supported; supported: {', '.join(DTYPES)}")
        if len(self.layer_types) != self.num_layers:
            raise ModelError(f"ModelConfig.layer_types has {len(self.layer_types)} entries; num_layers is {self.num_layers}")
        for t in self.layer_types:
            if t not in LAYER_TYPES:
                raise ModelError(f"ModelConfig.layer_types entry {t!r} is not supported; supported: {', '.join(LAYER_TYPES)}")
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise ModelError("ModelConfig.layer_types has sliding_attention layers but sliding_window is not set")
        rot = self.rotary_dim
        if rot % 2 or rot <= 0 or rot > self.head_dim:
            raise ModelError(f"ModelConfig.partial_rotary_factor {self.partial_rotary_factor!r} gives rotary dim {rot}")
        rs = self.rope_scaling
        if rs is not None and rs.rope_type == "longrope":
            for name in ("short_factor", "long_factor"):
                if len(getattr(rs, name)) != rot // 2:
                    raise ModelError(
                        f"ModelConfig.rope_scaling.{name} has {len(getattr(rs, name))} entries; expected rotary_dim/2 = {rot // 2}"
                    )
        if self.num_labels < 0:
            raise ConfigError(f"ModelConfig.num_labels must be >= 0, got {self.num_labels}")

    # ------------------------------------------------------------------ derived
    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def layer_windows(self) -> tuple[int, ...]:
        """Per-layer sliding window in positions; 0 = global attention."""
        return tuple(int(self.sliding_window) if t == "sliding_attention" else 0 for t in self.layer_types)

    @property
    def attn_scale(self) -> float:
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ tiny
    @classmethod
    def tiny(cls, vocab_size: int = 256, **overrides) -> "ModelConfig":
        """A Llama-style model of about 1-5M parameters for the embedded task.

        Defaults (about 3.2M parameters at vocab 256): hidden 256, MLP 768,
        4 layers, 4 heads, 2 KV heads, tied embeddings; any field can be
        overridden by keyword.
        """
        kw: dict[str, Any] = dict(
            vocab_size=vocab_size, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
            num_kv_heads=2, tie_embeddings=True, max_position_embeddings=2048, model_type="llama",
        )
        kw.update(overrides)
        return cls(**kw)

    # ------------------------------------------------------------------ HF
    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "ModelConfig":
        """Map an HF ``config.json`` dict; ``overrides`` set ModelConfig fields
        (e.g. ``param_dtype``, ``remat``) afterwards.

        Raises one ``ValueError`` naming the field and value for anything this
        decoder does not implement.
        """
        return cls(**{**_fields_from_hf(dict(hf)), **overrides})

    def hf_architecture(self) -> str:
        table = _SEQ_CLS_ARCH if self.num_labels > 0 else _CAUSAL_LM_ARCH
        if self.model_type not in table:
            raise _err("model_type", self.model_type, f"is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        return table[self.model_type]

    def to_hf(self) -> dict:
        """HF ``config.json`` dict that transformers loads as the same model.

        Raises ``ValueError`` naming the fields when this config uses a feature
        its ``model_type`` cannot express in HF (e.g. qk_norm on llama).
        """
        hf = _fields_to_hf(self)
        back = ModelConfig.from_hf(hf, **{name: getattr(self, name) for name in RUNTIME_FIELDS})
        diff = [
            f"{f.name}={getattr(self, f.name)!r} (HF {self.model_type} gives {getattr(back, f.name)!r})"
            for f in dataclasses.fields(self)
            if f.name != "initializer_range" and getattr(self, f.name) != getattr(back, f.name)
        ]
        if diff:
            raise ModelError(f"ModelConfig cannot be written as HF model_type {self.model_type!r}: " + "; ".join(diff))
        return hf


# ---------------------------------------------------------------------- mapping
def _get(hf: dict, family: str, key: str, default: Any = None) -> Any:
    if key in hf and hf[key] is not None:
        return hf[key]
    return _FAMILY_DEFAULTS[family].get(key, default)


def _token_id(hf: dict, family: str, key: str) -> Any:
    """Special-token ids: an explicit null means "none", an absent key the family default."""
    return hf[key] if key in hf else _FAMILY_DEFAULTS[family].get(key)


def _require(hf: dict, key: str) -> Any:
    if key not in hf or hf[key] is None:
        raise _err(key, None, "is required (missing from config.json)")
    return hf[key]


def _rope_from_hf(hf: dict, family: str) -> tuple[float, RopeScaling | None, float]:
    """-> (rope_theta, rope_scaling, partial_rotary_factor) from old or new HF keys."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise _err("rope_parameters", params or scaling, "must be a dict")
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", hf.get("rope_theta", 10000.0))
    partial = merged.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) or 1.0
    if float(partial) != 1.0 and family != "phi3":
        raise _err("partial_rotary_factor", partial, f"is not supported for model_type {family!r}")
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    if family == "phi3" and rope_type in ("su", "yarn"):
        rope_type = "longrope"  # transformers' Phi-3 backward compatibility
    if rope_type == "default":
        return float(theta), None, float(partial)
    if rope_type not in ROPE_TYPES:
        raise _err("rope_scaling.rope_type", rope_type, f"is not supported; supported: default, {', '.join(ROPE_TYPES)}")
    if rope_type == "longrope" and family != "phi3":
        raise _err("rope_scaling.rope_type", rope_type, f"is not supported for model_type {family!r} (only phi3)")
    orig = merged.get("original_max_position_embeddings", hf.get("original_max_position_embeddings"))
    tup = lambda v: None if v is None else tuple(float(x) for x in v)  # noqa: E731
    fl = lambda v: None if v is None else float(v)  # noqa: E731
    rs = RopeScaling(
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


def _fields_from_hf(hf: dict) -> dict:
    family = hf.get("model_type")
    if family not in SUPPORTED_MODEL_TYPES:
        raise _err("model_type", family, f"is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if hf.get("quantization_config"):
        raise _err("quantization_config", hf["quantization_config"].get("quant_method", "?"), "is not supported (unquantized checkpoints only)")
    if hf.get("use_bidirectional_attention"):
        raise _err("use_bidirectional_attention", hf["use_bidirectional_attention"], "is not supported (causal decoders only)")
    archs = hf.get("architectures") or []
    is_cls = any(a.endswith("ForSequenceClassification") for a in archs)
    for a in archs:
        if a not in (_CAUSAL_LM_ARCH[family], _SEQ_CLS_ARCH[family]):
            raise _err("architectures", a, f"is not supported; supported: {_CAUSAL_LM_ARCH[family]}, {_SEQ_CLS_ARCH[family]}")

    hidden = int(_require(hf, "hidden_size"))
    heads = int(_require(hf, "num_attention_heads"))
    kv_heads = int(hf.get("num_key_value_heads") or heads)
    head_dim = _get(hf, family, "head_dim") or hidden // heads
    theta, rope_scaling, partial = _rope_from_hf(hf, family)

    # activation
    if family == "gemma2":
        act_name = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    elif family == "gemma":
        act_name = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
        if act_name == "gelu":  # transformers maps Gemma's legacy "gelu" to the tanh approximation
            act_name = "gelu_pytorch_tanh"
    else:
        act_name = _get(hf, family, "hidden_act")
    if act_name not in _HF_ACTIVATIONS:
        raise _err("hidden_act", act_name, f"is not supported; supported: {', '.join(_HF_ACTIVATIONS)}")

    # attention layout
    num_layers = int(_require(hf, "num_hidden_layers"))
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
            raise _err("layer_types", hf["layer_types"], "uses sliding_attention but use_sliding_window is false")
    elif family == "gemma2":
        sliding_window = _get(hf, family, "sliding_window")
        lt = hf.get("layer_types")
        if lt is None:
            lt = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)]
        layer_types = tuple(lt)
    if layer_types is not None:
        if len(layer_types) != num_layers:
            raise _err("layer_types", list(layer_types), f"must have num_hidden_layers={num_layers} entries")
        for t in layer_types:
            if t not in LAYER_TYPES:
                raise _err("layer_types", t, f"is not supported; supported: {', '.join(LAYER_TYPES)}")
        if "sliding_attention" in layer_types and not sliding_window:
            raise _err("sliding_window", sliding_window, "must be a positive integer for sliding_attention layers")
    if sliding_window is not None and "sliding_attention" not in (layer_types or ()):
        sliding_window = None

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
        activation=_HF_ACTIVATIONS[act_name],
        tie_embeddings=bool(_get(hf, family, "tie_word_embeddings")),
        embed_scale=family in ("gemma", "gemma2"),
        final_logit_softcap=_get(hf, family, "final_logit_softcapping") if family == "gemma2" else None,
        num_labels=num_labels,
        sliding_window=None if sliding_window is None else int(sliding_window),
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


def _fields_to_hf(c: ModelConfig) -> dict:
    fam = c.model_type
    if fam not in SUPPORTED_MODEL_TYPES:
        raise _err("model_type", fam, f"is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling is not None:
        rope_parameters = {**c.rope_scaling.to_hf(), "rope_theta": c.rope_theta}
    if fam == "phi3":
        rope_parameters["partial_rotary_factor"] = c.partial_rotary_factor
    hf: dict[str, Any] = {
        "architectures": [c.hf_architecture()],
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


def dtype_of(name: str):
    """jnp dtype for a ModelConfig dtype name."""
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]

