"""The configurable decoder-only transformer (Flax NNX) and its KV cache.

Layer parameters are stacked along a leading ``"layers"`` axis (one ``Block``
module holding ``[L, ...]`` arrays) and the forward pass is one
``jax.lax.scan`` over that axis, so compile time does not grow with depth.
Per-layer differences (Gemma 2's alternating local/global attention) are a
scanned int32 window per layer. Remat wraps the scanned layer body with the
policy named by ``ModelConfig.remat``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from lnpo.models import lora
from lnpo.models.attention import Attention
from lnpo.models.attention_kernels import TokenInfo
from lnpo.models.config import ModelConfig, dtype_of
from lnpo.models.layers import Embed, LMHead, Proj, RMSNorm, activation, init_normal_params
from lnpo.models.rope import rope_tables
from lnpo.parallel import constrain

ACT = ("batch", "length", "act_embed")


class MLP(nnx.Module):
    """Gated MLP: ``down(act(gate(x)) * up(x))``; gate/up ``[embed, mlp]``, down ``[mlp, embed]``."""

    def __init__(self, config: ModelConfig, *, layers: int = 0):
        c = config
        D, F = c.hidden_size, c.intermediate_size
        kw = dict(bias=c.mlp_bias, layers=layers)
        self.gate_proj = Proj((D,), (F,), ("embed",), ("mlp",), c, **kw)
        self.up_proj = Proj((D,), (F,), ("embed",), ("mlp",), c, **kw)
        self.down_proj = Proj((F,), (D,), ("mlp",), ("embed",), c, **kw)
        self.activation = c.activation

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        h = activation(self.activation)(self.gate_proj(x_BxTxD)) * self.up_proj(x_BxTxD)
        h = constrain(h, ("batch", "length", "act_mlp"))
        return self.down_proj(h)


class Block(nnx.Module):
    """One pre-norm decoder layer (Gemma 2: also post-attention / post-MLP norms)."""

    def __init__(self, config: ModelConfig, *, layers: int = 0):
        c = config
        D = c.hidden_size
        self.attn_norm = RMSNorm(D, c, layers=layers)
        self.attn = Attention(c, layers=layers)
        self.mlp_norm = RMSNorm(D, c, layers=layers)
        self.mlp = MLP(c, layers=layers)
        if c.post_norms:
            self.post_attn_norm = RMSNorm(D, c, layers=layers)
            self.post_mlp_norm = RMSNorm(D, c, layers=layers)
        else:
            self.post_attn_norm = self.post_mlp_norm = None

    def __call__(self, x_BxTxD, cos, sin, q_info, k_info, window, kv_cache=None):
        h, new_cache = self.attn(self.attn_norm(x_BxTxD), cos, sin, q_info, k_info, window, kv_cache)
        if self.post_attn_norm is not None:
            h = self.post_attn_norm(h)
        x = constrain(x_BxTxD + h, ACT)
        h = self.mlp(self.mlp_norm(x))
        if self.post_mlp_norm is not None:
            h = self.post_mlp_norm(h)
        return constrain(x + h, ACT), new_cache


@struct.dataclass
class KVCache:
    """Decode cache for a batch of B rows and S slots (a pytree; jit-friendly).

    k, v: ``[L, B, S, kv_heads, head_dim]``; positions: int32 ``[B, S]`` (RoPE
    position of the token in each slot); valid: bool ``[B, S]`` (slot holds a
    real token); index: int32 scalar, the next slot to write (same for every
    row). Slot order is the causal order; padding slots are simply invalid.
    """

    k: jax.Array
    v: jax.Array
    positions: jax.Array
    valid: jax.Array
    index: jax.Array

    @property
    def max_length(self) -> int:
        return self.k.shape[2]


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def _remat(fn, name: str):
    if name == "none":
        return fn
    return jax.checkpoint(fn, policy=_REMAT_POLICIES[name], prevent_cse=False)


def _default_positions(input_ids_BxT: jax.Array) -> jax.Array:
    B, T = input_ids_BxT.shape
    return jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))


class Decoder(nnx.Module):
    """Decoder-only transformer for every family in ``ModelConfig``.

    Usage::

        model = Decoder(ModelConfig.tiny(), rngs=nnx.Rngs(0))
        logits_BxTxV = model(input_ids_BxT)                    # causal, positions 0..T-1
        h_BxTxD = model.hidden_states(ids, positions=..., segment_ids=..., branch_ids=...)
        logits = model.unembed(h_BxTxD)                          # float32

    Parameters: ``embed.embedding [vocab, embed]``; ``layers.*`` stacked
    ``[layers, ...]``; ``final_norm``; ``lm_head.kernel [vocab, embed]`` when
    untied; ``score_head.kernel [embed, labels]`` when ``num_labels > 0``.
    Random init from ``rngs.params()``: kernels and embeddings
    N(0, initializer_range), norms 1 (0 for ``(1 + w)`` norms), biases 0.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = Embed(config)
        self.layers = Block(config, layers=config.num_layers)
        self.final_norm = RMSNorm(config.hidden_size, config)
        has_lm_head = not config.tie_embeddings and config.num_labels == 0
        self.lm_head = LMHead(config) if has_lm_head else None
        if config.num_labels > 0:
            self.score_head = Proj((config.hidden_size,), (config.num_labels,), ("embed",), ("labels",), config)
        else:
            self.score_head = None
        init_normal_params(self, rngs.params(), config.initializer_range)

    # ------------------------------------------------------------------ forward
    def __call__(self, input_ids_BxT: jax.Array, **kwargs) -> jax.Array:
        """Logits float32 ``[B, T, V]``; kwargs as in :meth:`hidden_states`."""
        return self.unembed(self.hidden_states(input_ids_BxT, **kwargs))

    def hidden_states(
        self,
        input_ids_BxT: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        branch_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Final-normed hidden states ``[B, T, D]`` in compute dtype.

        positions: int ``[B, T]`` RoPE positions (default 0..T-1 per row).
        segment_ids: int ``[B, T]`` packed-sequence ids, 0 = padding (default: all 1).
        branch_ids: int ``[B, T]`` 0 = shared prefix, else a branch that sees the
        prefix and itself only (default: no branch rule).
        """
        ids = jnp.asarray(input_ids_BxT, jnp.int32)
        B, T = ids.shape
        positions = _default_positions(ids) if positions is None else jnp.asarray(positions, jnp.int32)
        segments = jnp.ones((B, T), jnp.int32) if segment_ids is None else jnp.asarray(segment_ids, jnp.int32)
        branches = None if branch_ids is None else jnp.asarray(branch_ids, jnp.int32)
        info = TokenInfo(positions, segments, branches, jnp.arange(T, dtype=jnp.int32))
        x = constrain(self.embed.lookup(ids), ACT)
        cos, sin = rope_tables(self.config, positions)
        x, _ = self._run_layers(x, cos, sin, info, info, cache=None)
        return self.final_norm(x)

    def unembed(self, hidden_BxTxD: jax.Array) -> jax.Array:
        """LM logits float32 ``[B, T, V]`` (tied or untied; Gemma 2 final soft-cap)."""
        if self.lm_head is not None:
            logits = self.lm_head(hidden_BxTxD)
        elif self.config.tie_embeddings:
            logits = self.embed.attend(hidden_BxTxD)
        else:
            raise ValueError("this model has no LM head (num_labels > 0 with untied embeddings)")
        cap = self.config.final_logit_softcap
        if cap is not None:
            logits = jnp.tanh(logits / cap) * cap
        return constrain(logits, ("batch", "length", "act_vocab"))

    def score(self, hidden_BxTxD: jax.Array) -> jax.Array:
        """Sequence-classification head: float32 ``[B, T, num_labels]``."""
        if self.score_head is None:
            raise ValueError("this model has no score head (config.num_labels == 0)")
        return self.score_head(hidden_BxTxD).astype(jnp.float32)

    # ------------------------------------------------------------------ layers
    def _run_layers(self, x, cos, sin, q_info, k_info, cache: KVCache | None):
        """Scan the stacked layers. Returns (x, (k, v) stacked caches or None)."""
        graphdef, state = nnx.split(self.layers)
        windows = jnp.asarray(self.config.layer_windows, jnp.int32)
        dropout_key = lora.active_dropout_key()  # LoRA dropout (train step only): one key per layer
        layer_index = None if dropout_key is None else jnp.arange(self.config.num_layers, dtype=jnp.int32)

        def body(carry, xs):
            layer_state, window, kc, vc, i = xs
            block = nnx.merge(graphdef, layer_state)
            kv = None if kc is None else (kc, vc, cache.index)
            with lora.dropout_key(None if i is None else jax.random.fold_in(dropout_key, i)):
                y, new_kv = block(carry, cos, sin, q_info, k_info, window, kv)
            return y, new_kv

        body = _remat(body, self.config.remat)
        kc = vc = None
        if cache is not None:
            kc, vc = cache.k, cache.v
        return jax.lax.scan(body, x, (state, windows, kc, vc, layer_index))

    # ------------------------------------------------------------------ decoding
    def init_cache(self, batch: int, max_length: int, dtype=None) -> KVCache:
        """Empty cache for ``batch`` rows of ``max_length`` slots (dtype: compute dtype)."""
        c = self.config
        dtype = dtype_of(c.compute_dtype) if dtype is None else dtype
        shape = (c.num_layers, batch, max_length, c.num_kv_heads, c.head_dim)
        return KVCache(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            positions=jnp.zeros((batch, max_length), jnp.int32),
            valid=jnp.zeros((batch, max_length), bool),
            index=jnp.zeros((), jnp.int32),
        )

    def decode_hidden(
        self,
        input_ids_BxT: jax.Array,
        positions_BxT: jax.Array,
        cache: KVCache,
        *,
        valid_BxT: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Append T tokens per row to the cache and return their final hidden states.

        Works for a prompt prefill (T > 1) and single-token steps (T = 1). The
        tokens go to slots ``[cache.index, cache.index + T)`` of every row.
        ``valid_BxT`` (default all True) marks real tokens: left- or
        right-padded prompts pass False on pad slots, which no later token
        attends to. ``positions_BxT`` are RoPE positions (e.g. 0..len-1 over the
        real tokens of a left-padded prompt, then len, len+1, ... per row).
        The caller keeps ``cache.index + T <= max_length`` (not checked under jit).
        """
        ids = jnp.asarray(input_ids_BxT, jnp.int32)
        B, T = ids.shape
        positions = jnp.asarray(positions_BxT, jnp.int32)
        valid = jnp.ones((B, T), bool) if valid_BxT is None else jnp.asarray(valid_BxT, bool)
        if not isinstance(cache.index, jax.core.Tracer) and int(cache.index) + T > cache.max_length:
            raise ValueError(f"KV cache overflow: index {int(cache.index)} + {T} tokens "
                             f"> max_length {cache.max_length}")
        index = cache.index
        cache_pos = jax.lax.dynamic_update_slice_in_dim(cache.positions, positions, index, axis=1)
        cache_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, valid, index, axis=1)
        q_info = TokenInfo(positions, valid.astype(jnp.int32), None, index + jnp.arange(T, dtype=jnp.int32))
        k_info = TokenInfo(cache_pos, cache_valid.astype(jnp.int32), None,
                           jnp.arange(cache.max_length, dtype=jnp.int32))
        x = self.embed.lookup(ids)
        cos, sin = rope_tables(self.config, positions)
        x, (k, v) = self._run_layers(x, cos, sin, q_info, k_info, cache=cache)
        new_cache = KVCache(k=k, v=v, positions=cache_pos, valid=cache_valid, index=index + T)
        return self.final_norm(x), new_cache

    def decode(self, input_ids_BxT, positions_BxT, cache: KVCache, *, valid_BxT=None) -> tuple[jax.Array, KVCache]:
        """:meth:`decode_hidden` followed by :meth:`unembed`: (logits f32 ``[B, T, V]``, cache)."""
        h, cache = self.decode_hidden(input_ids_BxT, positions_BxT, cache, valid_BxT=valid_BxT)
        return self.unembed(h), cache


# ---------------------------------------------------------------------- helpers
def logical_axes(model: nnx.Module):
    """Logical-axis tuples, one per parameter, in the structure of ``nnx.state(model, nnx.Param)``.

    Tuples are pytree nodes: map over the result with
    ``is_leaf=lambda x: isinstance(x, tuple)``.
    """
    return jax.tree.map(_axes_of, nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))


def _axes_of(variable: nnx.Variable) -> tuple:
    """A parameter's logical axis names (its ``out_sharding`` metadata)."""
    return tuple(variable.get_metadata().get("out_sharding") or ())


def param_shardings(model: nnx.Module, mesh, rules=None):
    """``NamedSharding`` per parameter (structure of ``nnx.state(model, nnx.Param)``); a
    dimension its mesh axis does not divide (KV heads fewer than the tensor axis) is
    replicated over that axis."""
    from lnpo.parallel import DEFAULT_RULES, named_sharding

    rules = DEFAULT_RULES if rules is None else rules
    return jax.tree.map(
        lambda v: named_sharding(mesh, _axes_of(v), rules, shape=v.shape),
        nnx.state(model, nnx.Param),
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def init_sharded(config: ModelConfig, seed: int, mesh) -> Decoder:
    """A randomly initialized Decoder whose parameters are created directly in their shardings on ``mesh``."""
    import functools

    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(seed)))
    graphdef, _ = nnx.split(abstract)

    @functools.partial(jax.jit, out_shardings=param_shardings(abstract, mesh))
    def init():
        return nnx.state(Decoder(config, rngs=nnx.Rngs(seed)), nnx.Param)

    return nnx.merge(graphdef, init())


def sequence_scores(model: Decoder, input_ids_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
    """Score-head output at each row's last real token.

    mask_BxT: attention mask or segment ids (nonzero = real token; left or right
    padding). Positions count real tokens from 0. Returns float32 ``[B]`` when
    ``num_labels == 1``, else ``[B, num_labels]``.
    """
    mask = jnp.asarray(mask_BxT) != 0
    segments = mask.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(segments, axis=1) - 1, 0)
    hidden = model.hidden_states(input_ids_BxT, positions=positions, segment_ids=segments)
    T = mask.shape[1]
    last = jnp.argmax(jnp.where(mask, jnp.arange(T), -1), axis=1)
    h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)  # [B, 1, D]
    scores = model.score(h_last)[:, 0, :]
    return scores[:, 0] if scores.shape[-1] == 1 else scores
