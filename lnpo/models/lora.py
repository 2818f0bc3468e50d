"""LoRA adapters on the decoder's projections, as PEFT defines them.

A targeted projection ``y = x W`` (``W [*in, *out]``) gains ``A [*in, r]`` and ``B [r, *out]``::

    y = x W + scale * (dropout(x) A) B,    scale = alpha / r   (rslora: alpha / sqrt(r))

exactly PEFT's ``lora_B(lora_A(dropout(x))) * scaling`` (``peft.tuners.lora.layer.Linear``).
Initialization is PEFT's default (``init_lora_weights=True``): ``A`` is ``kaiming_uniform_(a=sqrt(5))``
of torch's ``[r, in]`` weight, i.e. U(-1/sqrt(in), 1/sqrt(in)) with ``in`` = prod(in dims); ``B`` = 0,
so an untrained adapter leaves the model unchanged.

Adapters are :class:`LoraParam` variables (a subclass of ``nnx.Param``) attached to the ``Proj`` modules
as ``lora_a`` / ``lora_b``, stacked over layers like the kernels, with logical axes derived from the
kernel's (``A``: ``(*in_axes, None)``, ``B``: ``(None, *out_axes)``), so they shard like the matrices
they adapt. :func:`split` separates them from the frozen base; :func:`base_graphdef` is the same model
with the adapters off (the reference of ``reference.mode="base"``: the base weights, no copy).

Dropout (rate > 0) is active only inside :func:`dropout_key` (the train step); each layer and
projection folds its own index into the key.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lnpo.errors import ConfigError

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
TARGETS = ATTENTION_TARGETS + MLP_TARGETS  # PEFT's module names; "all-linear" = all of them
ALL_LINEAR = "all-linear"
BASE_DTYPES = ("float32", "bfloat16", "int8")


class LoraParam(nnx.Param):
    """A trainable adapter matrix (``lora_a`` / ``lora_b``); everything else of a LoRA model is frozen."""


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """The adapters of a run: ``rank`` r > 0, ``alpha``, ``dropout`` in [0, 1), ``targets`` (PEFT module names),
    ``rslora`` (scale alpha / sqrt(r) instead of alpha / r)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS
    rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def parse_targets(value) -> tuple[str, ...]:
    """``"all-linear"`` or comma-separated PEFT module names (a list or tuple works too) -> names in
    :data:`TARGETS` order. Raises ConfigError naming ``config.model.lora.targets``."""
    names = [value] if isinstance(value, str) else list(value)
    names = [n.strip() for item in names for n in str(item).split(",") if n.strip()]
    if names == [ALL_LINEAR]:
        return TARGETS
    bad = [n for n in names if n not in TARGETS]
    if not names or bad:
        raise ConfigError(f"config.model.lora.targets: {value!r} is not {ALL_LINEAR!r} or a comma-separated list "
                          f"of {', '.join(TARGETS)}")
    return tuple(n for n in TARGETS if n in names)


def spec_from_config(lora) -> LoraSpec | None:
    """The :class:`LoraSpec` of ``config.model.lora`` (None when ``rank`` is 0), after :func:`check_config`."""
    check_config(lora)
    if not lora.rank:
        return None
    return LoraSpec(rank=int(lora.rank), alpha=float(lora.alpha), dropout=float(lora.dropout),
                    targets=parse_targets(lora.targets), rslora=bool(lora.rslora))


def check_config(lora) -> None:
    """One-line ConfigError naming the ``config.model.lora`` field that is invalid."""
    field = "config.model.lora"
    rank = lora.rank
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ConfigError(f"{field}.rank: must be an integer >= 0 (0 = no LoRA), got {rank!r}")
    alpha = lora.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"{field}.alpha: must be a number > 0, got {alpha!r}")
    p = lora.dropout
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ConfigError(f"{field}.dropout: must be a number in [0, 1), got {p!r}")
    if not isinstance(lora.rslora, bool):
        raise ConfigError(f"{field}.rslora: must be True or False, got {lora.rslora!r}")
    if lora.base_dtype not in BASE_DTYPES:
        raise ConfigError(f"{field}.base_dtype: {lora.base_dtype!r} is not one of {', '.join(BASE_DTYPES)}")
    if not isinstance(lora.init_from, str):
        raise ConfigError(f"{field}.init_from: must be a PEFT adapter directory (a string), got {lora.init_from!r}")
    parse_targets(lora.targets)
    if not rank:
        return
    if lora.init_from:
        import os

        if not os.path.isfile(os.path.join(lora.init_from, "adapter_config.json")):
            raise ConfigError(f"{field}.init_from: {lora.init_from!r} has no adapter_config.json "
                              f"(a PEFT adapter directory)")


# ---------------------------------------------------------------------- the model's projections
def projections(model) -> dict[str, nnx.Module]:
    """PEFT module name -> the decoder's (layer-stacked) ``Proj`` of that name."""
    attn, mlp = model.layers.attn, model.layers.mlp
    return {name: getattr(attn if name in ATTENTION_TARGETS else mlp, name) for name in TARGETS}


def check_model(config) -> None:
    """ModelError for a model whose projections PEFT names differently (Phi-3's fused qkv / gate_up)."""
    from lnpo.errors import ModelError

    if config.fused_qkv or config.fused_gate_up:
        raise ModelError(f"model_type {config.model_type!r}: LoRA on fused projections (qkv_proj, gate_up_proj) is "
                         "not supported; use a model with separate q/k/v and gate/up projections")


def adapter_shapes(proj, rank: int) -> tuple[tuple, tuple, tuple, tuple]:
    """``(a_shape, a_axes, b_shape, b_axes)`` of the adapters of ``proj`` (layer-stacked like its kernel)."""
    shape = tuple(proj.kernel.shape)
    axes = tuple(proj.kernel.get_metadata().get("out_sharding") or (None,) * len(shape))
    lead = len(shape) - proj.n_in - proj.n_out
    lead_shape, in_shape, out_shape = shape[:lead], shape[lead:lead + proj.n_in], shape[lead + proj.n_in:]
    lead_axes, in_axes, out_axes = axes[:lead], axes[lead:lead + proj.n_in], axes[lead + proj.n_in:]
    return ((*lead_shape, *in_shape, rank), (*lead_axes, *in_axes, None),
            (*lead_shape, rank, *out_shape), (*lead_axes, None, *out_axes))


def add_adapters(model, spec: LoraSpec, key: jax.Array, *, mesh=None, rules=None) -> None:
    """Attach PEFT-initialized adapters (``A`` uniform, ``B`` = 0, float32) to ``spec.targets`` in place,
    each placed in the sharding of its logical axes on ``mesh`` (None: the default device)."""
    from lnpo.parallel import DEFAULT_RULES, named_sharding

    check_model(model.config)
    rules = DEFAULT_RULES if rules is None else rules
    for index, name in enumerate(TARGETS):
        if name not in spec.targets:
            continue
        proj = projections(model)[name]
        a_shape, a_axes, b_shape, b_axes = adapter_shapes(proj, spec.rank)
        fan_in = math.prod(a_shape[len(a_shape) - 1 - proj.n_in:-1])
        bound = 1.0 / math.sqrt(fan_in)
        shardings = (None, None) if mesh is None else (named_sharding(mesh, a_axes, rules, shape=a_shape),
                                                       named_sharding(mesh, b_axes, rules, shape=b_shape))
        init = jax.jit(lambda k, s=a_shape, b=bound: jax.random.uniform(k, s, jnp.float32, -b, b),
                       out_shardings=shardings[0])
        zeros = jax.jit(lambda s=b_shape: jnp.zeros(s, jnp.float32), out_shardings=shardings[1])
        proj.lora_a = LoraParam(init(jax.random.fold_in(key, index)), eager_sharding=False, out_sharding=a_axes)
        proj.lora_b = LoraParam(zeros(), eager_sharding=False, out_sharding=b_axes)
        proj.lora_scale = spec.scale
        proj.lora_dropout = spec.dropout
        proj.lora_salt = index


def has_adapters(model) -> bool:
    return any(p.lora_a is not None for p in projections(model).values())


def split(model):
    """``(graphdef, adapters, base)``: the trainable :class:`LoraParam` state and the frozen rest;
    ``nnx.merge(graphdef, adapters, base)`` is the model."""
    return nnx.split(model, LoraParam, nnx.Param)


def base_graphdef(graphdef, adapters, base):
    """The graph of the same model with the adapters off: ``nnx.merge(base_graphdef(...), base)`` runs the base
    weights alone (no copy, the same computation as a model that never had adapters)."""
    model = nnx.merge(graphdef, adapters, base)
    for proj in projections(model).values():
        proj.lora_a = proj.lora_b = None
    out, _ = nnx.split(model, nnx.Param)
    return out


def merged_kernel(proj) -> jax.Array:
    """``W + scale * A B`` in float32 in the kernel's layout (dequantized when the base is int8)."""
    kernel = dequantized(proj) if proj.kernel_scale is not None else proj.kernel[...].astype(jnp.float32)
    if proj.lora_a is None:
        return kernel
    return kernel + proj.lora_scale * adapter_product(proj)


def adapter_product(proj) -> jax.Array:
    """``A B`` float32 ``[*lead, *in, *out]`` of a projection with adapters."""
    a = proj.lora_a[...].astype(jnp.float32)
    b = proj.lora_b[...].astype(jnp.float32)
    n_in, n_out = proj.n_in, proj.n_out
    lead = a.ndim - n_in - 1
    letters = "abcdefghij"
    lead_s, in_s, out_s = letters[:lead], letters[lead:lead + n_in], letters[lead + n_in:lead + n_in + n_out]
    return jnp.einsum(f"{lead_s}{in_s}r,{lead_s}r{out_s}->{lead_s}{in_s}{out_s}", a, b)


def dequantized(proj) -> jax.Array:
    """An int8 kernel times its per-output-channel scale, float32."""
    scale = proj.kernel_scale[...].astype(jnp.float32)  # [*lead, *out]
    kernel = proj.kernel[...].astype(jnp.float32)
    lead = kernel.ndim - proj.n_in - proj.n_out
    scale = scale.reshape(scale.shape[:lead] + (1,) * proj.n_in + scale.shape[lead:])
    return kernel * scale


# ---------------------------------------------------------------------- forward
_DROPOUT_KEY: contextvars.ContextVar = contextvars.ContextVar("lnpo_lora_dropout_key", default=None)


@contextlib.contextmanager
def dropout_key(key: jax.Array | None):
    """Within this context adapters with dropout > 0 drop inputs, drawing from ``key`` (None: no dropout)."""
    token = _DROPOUT_KEY.set(key)
    try:
        yield
    finally:
        _DROPOUT_KEY.reset(token)


def active_dropout_key() -> jax.Array | None:
    return _DROPOUT_KEY.get()


def delta(proj, x2: jax.Array, dtype) -> jax.Array:
    """``scale * (dropout(x) A) B`` for ``x2 [N, *in]`` in ``dtype``: ``[N, *out]``."""
    n = proj.n_in
    key = _DROPOUT_KEY.get()
    if proj.lora_dropout > 0 and key is not None:
        keep = jax.random.bernoulli(jax.random.fold_in(key, proj.lora_salt), 1.0 - proj.lora_dropout, x2.shape)
        x2 = jnp.where(keep, x2 / jnp.asarray(1.0 - proj.lora_dropout, x2.dtype), jnp.zeros((), x2.dtype))
    a = proj.lora_a[...].astype(dtype)
    b = proj.lora_b[...].astype(dtype)
    h = jax.lax.dot_general(x2, a, ((tuple(range(1, 1 + n)), tuple(range(n))), ((), ())))
    d = jax.lax.dot_general(h, b, (((1,), (0,)), ((), ())))
    return d * jnp.asarray(proj.lora_scale, dtype)


# ---------------------------------------------------------------------- int8 base
def quantize_int8(w: jax.Array, n_lead: int, n_in: int) -> tuple[jax.Array, jax.Array]:
    """Symmetric per-output-channel int8: ``q = round(w / s)`` with ``s = max|w| / 127`` over the input dims
    (``s = 1`` for an all-zero channel). Returns (int8 ``w``'s shape, float32 ``s [*lead, *out]``)."""
    w = w.astype(jnp.float32)
    in_axes = tuple(range(n_lead, n_lead + n_in))
    amax = jnp.max(jnp.abs(w), axis=in_axes, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    q = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
    return q, jnp.squeeze(scale, axis=in_axes)


def quantize_base(model) -> None:
    """Replace every projection kernel of the decoder layers by int8 + a float32 per-output-channel scale
    (in place, each in its kernel's sharding); the forward pass multiplies the matmul's output by the scale."""
    for proj in projections(model).values():
        kernel = proj.kernel
        axes = tuple(kernel.get_metadata().get("out_sharding") or ())
        lead = kernel.ndim - proj.n_in - proj.n_out
        sharding = getattr(kernel[...], "sharding", None)
        q, s = jax.jit(quantize_int8, static_argnums=(1, 2))(kernel[...], lead, proj.n_in)
        if sharding is not None and hasattr(sharding, "mesh"):
            from lnpo.parallel import named_sharding

            s = jax.device_put(s, named_sharding(sharding.mesh, axes[:lead] + axes[lead + proj.n_in:], shape=s.shape))
        proj.kernel = nnx.Param(q, eager_sharding=False, out_sharding=axes)
        proj.kernel_scale = nnx.Param(s, eager_sharding=False, out_sharding=axes[:lead] + axes[lead + proj.n_in:])


__all__: Sequence[str] = (
    "TARGETS",
    "LoraParam",
    "LoraSpec",
    "add_adapters",
    "base_graphdef",
    "dropout_key",
    "quantize_base",
    "spec_from_config",
    "split",
)
