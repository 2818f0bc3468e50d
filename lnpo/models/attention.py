"""The attention layer: q/k/v/o projections, RoPE and grouped-query self-attention, with the mask
built from per-token ids (:mod:`lnpo.models.attention_kernels`), through the kernel the model's
``attn_implementation`` names.
"""

from __future__ import annotations

import jax
from flax import nnx

from lnpo.models.attention_kernels import (
    TokenInfo,
    attention_mask,
    dot_product_attention,
    fused_attention,
    self_attention,
)
from lnpo.models.config import ModelConfig
from lnpo.models.layers import Proj, RMSNorm
from lnpo.models.ring import ring_attention
from lnpo.models.rope import apply_rope
from lnpo.parallel import constrain


class Attention(nnx.Module):
    """q/k/v/o projections (+ optional biases, q/k RMSNorm), RoPE and masked GQA.

    Params (per layer; stacked with a leading "layers" axis when ``layers`` > 0):
    q ``[embed, heads, head_dim]``, k/v ``[embed, kv_heads, head_dim]``,
    o ``[heads, head_dim, embed]``.
    """

    def __init__(self, config: ModelConfig, *, layers: int = 0):
        c = config
        D, H, K, Dh = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        kw = dict(layers=layers)
        self.q_proj = Proj((D,), (H, Dh), ("embed",), ("heads", "head_dim"), c, bias=c.qkv_bias, **kw)
        self.k_proj = Proj((D,), (K, Dh), ("embed",), ("kv_heads", "head_dim"), c, bias=c.qkv_bias, **kw)
        self.v_proj = Proj((D,), (K, Dh), ("embed",), ("kv_heads", "head_dim"), c, bias=c.qkv_bias, **kw)
        self.o_proj = Proj((H, Dh), (D,), ("heads", "head_dim"), ("embed",), c, bias=c.o_bias, **kw)
        if c.qk_norm:
            self.q_norm = RMSNorm(Dh, c, axis="head_dim", layers=layers)
            self.k_norm = RMSNorm(Dh, c, axis="head_dim", layers=layers)
        else:
            self.q_norm = self.k_norm = None
        self.scale = c.attn_scale
        self.softcap = c.attn_logit_softcap
        self.query_chunk = c.attn_query_chunk
        self.implementation = c.attn_implementation
        self.windows = tuple(sorted(set(c.layer_windows)))

    def __call__(
        self,
        x_BxTxD: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        q_info: TokenInfo,
        k_info: TokenInfo,
        window: jax.Array | int,
        kv_cache: tuple[jax.Array, jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Self-attention of x's tokens.

        Without a cache the keys are x's own tokens (k_info describes them). With
        ``kv_cache = (k_BxSxKxD, v_BxSxKxD, index)`` the new keys/values are written
        at slots ``[index, index + T)`` and queries attend over the whole cache
        (k_info describes the cache slots). Returns (out ``[B, T, D]``,
        updated (k, v) cache or None).
        """
        q = self.q_proj(x_BxTxD)
        k = self.k_proj(x_BxTxD)
        v = self.v_proj(x_BxTxD)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = constrain(q, ("batch", "length", "act_heads", None))
        new_cache = None
        if kv_cache is not None:
            k_cache, v_cache, index = kv_cache
            k = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), index, axis=1)
            new_cache = (k, v)
            k, v = k.astype(q.dtype), v.astype(q.dtype)
        if kv_cache is None and self.implementation == "splash":
            # Imported here: the Pallas TPU kernel (and the private jax functions its
            # differentiable merge uses) loads only for models that ask for it.
            from lnpo.models.splash import sharded_splash_attention

            out = sharded_splash_attention(q, k, v, q_info.segments, q_info.branches, windows=self.windows,
                                           window=window, scale=self.scale, softcap=self.softcap)
            out = constrain(out, ("batch", "length", "act_heads", None))
            return self.o_proj(out), None
        if kv_cache is None and self.implementation == "ring":
            out = ring_attention(q, k, v, q_info, window, scale=self.scale, softcap=self.softcap,
                                 query_chunk=self.query_chunk)
            out = constrain(out, ("batch", "length", "act_heads", None))
            return self.o_proj(out), None
        if kv_cache is None:  # the whole row's keys for this shard's queries (context parallelism)
            k = constrain(k, ("batch", None, "act_heads", None))
            v = constrain(v, ("batch", None, "act_heads", None))
        if kv_cache is None and self.implementation == "xla":
            out = self_attention(q, k, v, q_info, window, scale=self.scale, softcap=self.softcap,
                                 query_chunk=self.query_chunk)
        else:
            mask = constrain(attention_mask(q_info, k_info, window), ("batch", "length", None))
            if kv_cache is None:
                out = fused_attention(q, k, v, mask, scale=self.scale, implementation=self.implementation)
            else:
                out = dot_product_attention(q, k, v, mask, scale=self.scale, softcap=self.softcap,
                                            query_chunk=self.query_chunk)
        out = constrain(out, ("batch", "length", "act_heads", None))
        return self.o_proj(out), new_cache
