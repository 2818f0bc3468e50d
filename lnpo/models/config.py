"""``ModelConfig``: one frozen dataclass describing every supported decoder family.

The switches cover Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5, Qwen3, Gemma, Gemma 2
and Phi-3. ``ModelConfig.from_hf(config_json_dict)`` maps a Hugging Face
``config.json`` onto it (failing with one clear ``ValueError`` naming the field
and value for anything unsupported) and ``ModelConfig.to_hf()`` maps it back;
the translation itself is :mod:`lnpo.models.hf_config`.

The config is hashable (it is static metadata of the NNX module), so every
container field is a tuple and rope scaling is its own frozen dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lnpo.errors import ConfigError, ModelError
from lnpo.models.hf_config import (
    LAYER_TYPES,
    ROPE_TYPES,
    architecture,
    config_json_error,
    fields_from_hf,
    fields_to_hf,
)

ACTIVATIONS = ("silu", "gelu_tanh", "gelu", "relu")
REMAT_POLICIES = ("none", "full", "dots", "minimal", "dots_saveable", "dots_with_no_batch_dims_saveable")
DTYPES = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("xla", "cudnn", "splash", "ring")
# How a model runs, not what it is: not in an HF config.json, set when a model is built or loaded.
RUNTIME_FIELDS = ("param_dtype", "compute_dtype", "remat", "attn_query_chunk", "attn_implementation")


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
            raise config_json_error("rope_scaling.rope_type", self.rope_type,
                                    f"is not supported; supported: {', '.join(ROPE_TYPES)}")
        required = {
            "linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
            "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
        }[self.rope_type]
        for name in required:
            if getattr(self, name) is None:
                raise config_json_error(f"rope_scaling.{name}", None, f"is required for rope_type {self.rope_type!r}")

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
    attends all queries at once. Where the row is not split over a context axis the
    chunks are contiguous and each attends only the keys up to its end (the causal
    order hides the rest), so it also computes fewer scores.

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
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"ModelConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"ModelConfig: num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"ModelConfig.activation {self.activation!r} is not supported; "
                              f"supported: {', '.join(ACTIVATIONS)}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"ModelConfig.remat {self.remat!r} is not supported; "
                              f"supported: {', '.join(REMAT_POLICIES)}")
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
                raise ConfigError(f"ModelConfig.{name} {getattr(self, name)!r} is not supported; "
                                  f"supported: {', '.join(DTYPES)}")
        if len(self.layer_types) != self.num_layers:
            raise ModelError(f"ModelConfig.layer_types has {len(self.layer_types)} entries; "
                             f"num_layers is {self.num_layers}")
        for t in self.layer_types:
            if t not in LAYER_TYPES:
                raise ModelError(f"ModelConfig.layer_types entry {t!r} is not supported; "
                                 f"supported: {', '.join(LAYER_TYPES)}")
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
                        f"ModelConfig.rope_scaling.{name} has {len(getattr(rs, name))} entries; "
                        f"expected rotary_dim/2 = {rot // 2}"
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

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ tiny
    @classmethod
    def tiny(cls, vocab_size: int = 256, **overrides) -> ModelConfig:
        """A small Llama-style model with tied embeddings at this dataclass's default sizes (for tests and
        examples); any field can be overridden by keyword. The embedded task's tiny model is
        ``lnpo.implied.tiny_model_config`` (sizes from ``config.model.tiny``)."""
        return cls(**{"vocab_size": vocab_size, "tie_embeddings": True, **overrides})

    # ------------------------------------------------------------------ HF
    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **overrides) -> ModelConfig:
        """Map an HF ``config.json`` dict; ``overrides`` set ModelConfig fields
        (e.g. ``param_dtype``, ``remat``) afterwards.

        Raises one ``ValueError`` naming the field and value for anything this
        decoder does not implement.
        """
        fields = fields_from_hf(hf)
        if fields["rope_scaling"] is not None:
            fields["rope_scaling"] = RopeScaling(**fields["rope_scaling"])
        return cls(**{**fields, **overrides})

    def hf_architecture(self) -> str:
        return architecture(self.model_type, self.num_labels)

    def to_hf(self) -> dict:
        """HF ``config.json`` dict that transformers loads as the same model.

        Raises ``ValueError`` naming the fields when this config uses a feature
        its ``model_type`` cannot express in HF (e.g. qk_norm on llama).
        """
        hf = fields_to_hf(self)
        back = ModelConfig.from_hf(hf, **{name: getattr(self, name) for name in RUNTIME_FIELDS})
        diff = [
            f"{f.name}={getattr(self, f.name)!r} (HF {self.model_type} gives {getattr(back, f.name)!r})"
            for f in dataclasses.fields(self)
            if f.name != "initializer_range" and getattr(self, f.name) != getattr(back, f.name)
        ]
        if diff:
            raise ModelError(f"ModelConfig cannot be written as HF model_type {self.model_type!r}: " + "; ".join(diff))
        return hf



def dtype_of(name: str):
    """jnp dtype for a ModelConfig dtype name."""
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]

