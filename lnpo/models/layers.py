"""Building blocks: annotated parameters, projections, RMSNorm, embeddings, activations.

Every parameter is an ``nnx.Param`` whose ``out_sharding`` metadata holds its
logical axis names (``("embed", "heads", "head_dim")`` ...). Modules created with
``layers=L`` stack their parameters with a leading ``"layers"`` axis of size L;
the decoder scans over that axis. Parameters are stored in ``param_dtype`` and
cast to ``compute_dtype`` where used; norms run in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lnpo.models.config import ModelConfig, dtype_of


def annotated_param(value: jax.Array, axes: Sequence[str | None]) -> nnx.Param:
    """``nnx.Param`` carrying logical axis names as flax ``out_sharding`` metadata.

    Eager sharding is off: placement is done by whoever owns the mesh
    (``from_pretrained`` or the trainer), so creating a model needs no mesh.
    """
    return nnx.Param(value, eager_sharding=False, out_sharding=tuple(axes))


def _stacked(shape: Sequence[int], axes: Sequence[str | None], layers: int):
    if layers:
        return (layers, *shape), ("layers", *axes)
    return tuple(shape), tuple(axes)


def init_param(
    shape: Sequence[int],
    axes: Sequence[str | None],
    config: ModelConfig,
    *,
    init: str = "normal",
    layers: int = 0,
) -> nnx.Param:
    """New parameter in ``param_dtype``: "zeros", "ones", or "normal".

    "normal" parameters start as zeros and are drawn N(0, initializer_range) by
    :func:`init_normal_params` once the whole model exists (one random draw for
    the model instead of one per parameter, which keeps init compile time low).
    """
    shape, axes = _stacked(shape, axes, layers)
    dtype = dtype_of(config.param_dtype)
    if init in ("normal", "zeros"):
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown init {init!r}")
    return annotated_param(value, axes)


RANDOM_PARAM_NAMES = ("kernel", "embedding")
_FLAT_DRAW_LIMIT = 1 << 24  # elements; above this, draw per parameter (sharding friendly)


def init_normal_params(module: nnx.Module, key: jax.Array, std: float) -> None:
    """Draw every parameter named ``kernel`` / ``embedding`` from N(0, std) in place.

    Small models use one flat draw split into the parameters (one random
    kernel to compile); large ones draw each parameter from ``fold_in(key, i)``.
    """
    params = sorted(
        ((path, v) for path, v in nnx.iter_graph(module)
         if isinstance(v, nnx.Param) and path and path[-1] in RANDOM_PARAM_NAMES),
        key=lambda pv: tuple(str(p) for p in pv[0]),
    )
    sizes = [math.prod(v.shape) for _, v in params]
    total = sum(sizes)
    if total <= _FLAT_DRAW_LIMIT:
        flat = jax.random.normal(key, (total,), jnp.float32) * std
        offset = 0
        for (_, v), n in zip(params, sizes):
            v[...] = flat[offset : offset + n].reshape(v.shape).astype(v.dtype)
            offset += n
    else:
        for i, (_, v) in enumerate(params):
            v[...] = (jax.random.normal(jax.random.fold_in(key, i), v.shape, jnp.float32) * std).astype(v.dtype)


class Proj(nnx.Module):
    """Linear map contracting the trailing ``in_shape`` dims of x with a kernel (optionally int8 with a
    per-output-channel ``kernel_scale``, optionally with LoRA adapters: :mod:`lnpo.models.lora`).

    kernel: ``[*in_shape, *out_shape]`` (logical ``in_axes + out_axes``), optional
    bias ``[*out_shape]``. ``x [..., *in_shape] -> y [..., *out_shape]`` in
    compute dtype.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        in_axes: Sequence[str | None],
        out_axes: Sequence[str | None],
        config: ModelConfig,
        *,
        bias: bool = False,
        layers: int = 0,
    ):
        self.n_in, self.n_out = len(in_shape), len(out_shape)
        self.compute_dtype = config.compute_dtype
        self.kernel = init_param((*in_shape, *out_shape), (*in_axes, *out_axes), config, layers=layers)
        self.bias = init_param(tuple(out_shape), tuple(out_axes), config, init="zeros", layers=layers) if bias else None
        # Set by lnpo.models.lora: an int8 kernel's per-output-channel scale, and LoRA adapters.
        self.kernel_scale = nnx.data(None)
        self.lora_a, self.lora_b = nnx.data(None), nnx.data(None)
        self.lora_scale, self.lora_dropout, self.lora_salt = 0.0, 0.0, 0

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = dtype_of(self.compute_dtype)
        kernel = self.kernel[...].astype(dtype)
        n = self.n_in
        lead, feat = x.shape[: x.ndim - n], x.shape[x.ndim - n :]
        # One 2-D-batched matmul over all leading (batch, length) positions: XLA:CPU
        # runs the backward of a 3-D dot_general about 2x slower than this.
        x2 = x.astype(dtype).reshape((-1, *feat))
        contract = (tuple(range(1, 1 + n)), tuple(range(n)))
        y = jax.lax.dot_general(x2, kernel, (contract, ((), ())))
        if self.kernel_scale is not None:  # int8 kernel: scale each output channel
            y = y * self.kernel_scale[...].astype(dtype)
        if self.lora_a is not None:
            from lnpo.models import lora

            y = y + lora.delta(self, x2, dtype)
        y = y.reshape((*lead, *kernel.shape[n:]))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class RMSNorm(nnx.Module):
    """RMSNorm over the last dim in float32: ``x / rms(x) * w`` (or ``* (1 + w)``).

    The result is cast back to the input dtype.
    """

    def __init__(self, dim: int, config: ModelConfig, *, axis: str = "norm", layers: int = 0):
        self.eps = float(config.rms_norm_eps)
        self.plus_one = bool(config.norm_plus_one)
        self.scale = init_param((dim,), (axis,), config, init="zeros" if self.plus_one else "ones", layers=layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        w = self.scale[...].astype(jnp.float32)
        y = y * (1.0 + w) if self.plus_one else y * w
        return y.astype(x.dtype)


class Embed(nnx.Module):
    """Token embedding ``[vocab, embed]``; ``lookup`` ids -> vectors, ``attend`` vectors -> f32 logits."""

    def __init__(self, config: ModelConfig):
        self.compute_dtype = config.compute_dtype
        self.multiplier = float(config.hidden_size) ** 0.5 if config.embed_scale else None
        self.embedding = init_param((config.vocab_size, config.hidden_size), ("vocab", "embed"), config)

    def lookup(self, ids_BxT: jax.Array) -> jax.Array:
        dtype = dtype_of(self.compute_dtype)
        x = jnp.take(self.embedding[...], ids_BxT, axis=0).astype(dtype)
        if self.multiplier is not None:
            x = x * jnp.asarray(self.multiplier, dtype)  # rounded to compute dtype, as HF does
        return x

    def attend(self, h_BxTxD: jax.Array) -> jax.Array:
        dtype = dtype_of(self.compute_dtype)
        return jnp.einsum(
            "btd,vd->btv", h_BxTxD.astype(dtype), self.embedding[...].astype(dtype),
            preferred_element_type=jnp.float32,
        )


class LMHead(nnx.Module):
    """Untied output projection stored like HF's ``lm_head.weight``: ``[vocab, embed]``."""

    def __init__(self, config: ModelConfig):
        self.compute_dtype = config.compute_dtype
        self.kernel = init_param((config.vocab_size, config.hidden_size), ("vocab", "embed"), config)

    def __call__(self, h_BxTxD: jax.Array) -> jax.Array:
        dtype = dtype_of(self.compute_dtype)
        return jnp.einsum(
            "btd,vd->btv", h_BxTxD.astype(dtype), self.kernel[...].astype(dtype),
            preferred_element_type=jnp.float32,
        )


def activation(name: str):
    """Elementwise activation by ModelConfig.activation name."""
    return {
        "silu": jax.nn.silu,
        "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "relu": jax.nn.relu,
    }[name]
