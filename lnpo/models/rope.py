"""Rotary position embeddings: frequencies (default, linear, llama3, longrope) and application.

Frequencies are computed once on the host in float64 and rounded to float32,
matching transformers' ``modeling_rope_utils``. Rotation follows HF's
"rotate_half" convention: the first ``rotary_dim`` features of a head are split
into two halves ``(x1, x2)`` that rotate together; features past
``rotary_dim`` (Phi-3's partial rotary) pass through unchanged.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lnpo.errors import ModelError
from lnpo.models.config import ModelConfig


def _base_inv_freq(config: ModelConfig) -> np.ndarray:
    dim = config.rotary_dim
    return 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def _llama3(inv_freq: np.ndarray, rs) -> np.ndarray:
    factor, low, high = rs.factor, rs.low_freq_factor, rs.high_freq_factor
    old_len = rs.original_max_position_embeddings
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled)


def inv_frequencies(config: ModelConfig, *, long: bool = False) -> np.ndarray:
    """float32 ``[rotary_dim // 2]`` inverse frequencies.

    ``long`` selects longrope's long factors (ignored for other rope types).
    """
    rs = config.rope_scaling
    base = _base_inv_freq(config)
    if rs is None:
        out = base
    elif rs.rope_type == "linear":
        out = base / rs.factor
    elif rs.rope_type == "llama3":
        out = _llama3(base, rs)
    elif rs.rope_type == "longrope":
        ext = np.asarray(rs.long_factor if long else rs.short_factor, dtype=np.float64)
        dim = config.rotary_dim
        out = 1.0 / (ext * config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    else:  # pragma: no cover - RopeScaling validates rope_type
        raise ModelError(f"rope_type {rs.rope_type!r} is not supported")
    return out.astype(np.float32)


def attention_factor(config: ModelConfig) -> float:
    """Multiplier on cos/sin (longrope's attention scaling; 1.0 otherwise)."""
    rs = config.rope_scaling
    if rs is None or rs.rope_type != "longrope":
        return 1.0
    if rs.attention_factor is not None:
        return float(rs.attention_factor)
    orig = rs.original_max_position_embeddings
    factor = rs.factor if rs.factor is not None else config.max_position_embeddings / orig
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(orig))


def rope_tables(config: ModelConfig, positions_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin float32 ``[B, T, rotary_dim // 2]`` for integer positions ``[B, T]``.

    For longrope the long factors are used for every position of the call when
    ``max(positions) + 1 > original_max_position_embeddings`` (transformers'
    rule, evaluated over the whole call).
    """
    inv = jnp.asarray(inv_frequencies(config))
    rs = config.rope_scaling
    if rs is not None and rs.rope_type == "longrope":
        use_long = jnp.max(positions_BxT) + 1 > rs.original_max_position_embeddings
        inv = jnp.where(use_long, jnp.asarray(inv_frequencies(config, long=True)), inv)
    angles = positions_BxT.astype(jnp.float32)[..., None] * inv
    scale = attention_factor(config)
    return jnp.cos(angles) * scale, jnp.sin(angles) * scale


def apply_rope(x_BxTxNxH: jax.Array, cos_BxTxR: jax.Array, sin_BxTxR: jax.Array) -> jax.Array:
    """Rotate the first ``2 * R`` features of every head; math in float32, result in x's dtype."""
    half = cos_BxTxR.shape[-1]
    rot = 2 * half
    xf = x_BxTxNxH.astype(jnp.float32)
    x1, x2, rest = xf[..., :half], xf[..., half:rot], xf[..., rot:]
    cos, sin = cos_BxTxR[:, :, None, :], sin_BxTxR[:, :, None, :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
    return out.astype(x_BxTxNxH.dtype)
