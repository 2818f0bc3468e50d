"""Hugging Face interop: ``from_pretrained`` and ``save_pretrained`` (safetensors only).

Each HF tensor is the row-wise concatenation of one or more *parts*; each part
is one of our parameters (one layer of it when stacked) under a fixed
reshape + transpose (:class:`Conv`). Phi-3's fused ``qkv_proj`` / ``gate_up_proj``
are the only multi-part tensors.

Loading builds the model abstractly (``nnx.eval_shape``), checks every tensor's
presence and shape against ``config.json`` first (one clear error), then creates
each parameter with ``jax.make_array_from_callback`` directly in its sharding:
the callback reads only the requested shard from the memory-mapped file, so a
host materializes its addressable shards and nothing else.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import SingleDeviceSharding

from lnpo.errors import InputNotFound, ModelError
from lnpo.models.config import ModelConfig, dtype_of
from lnpo.models.decoder import Decoder, logical_axes
from lnpo.models.hf_config import read_config
from lnpo.models.preflight import model_config
from lnpo.models.safetensors_io import FLOAT_DTYPES, SafetensorsFile, SafetensorsWriter
from lnpo.parallel import DEFAULT_RULES, named_sharding

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
# Tensors some checkpoints carry that the model does not use.
_IGNORED = (re.compile(r".*\.rotary_emb\.inv_freq$"),)


# ---------------------------------------------------------------------- layout
@dataclasses.dataclass(frozen=True)
class Conv:
    """ours = hf.reshape(mid).transpose(perm); hf = ours.transpose(inverse).reshape(hf_shape)."""

    hf_shape: tuple[int, ...]
    mid: tuple[int, ...]
    perm: tuple[int, ...]

    def to_ours(self, hf: np.ndarray) -> np.ndarray:
        return hf.reshape(self.mid).transpose(self.perm)

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        return ours.transpose(np.argsort(self.perm)).reshape(self.hf_shape)


@dataclasses.dataclass(frozen=True)
class Part:
    path: tuple[str, ...]  # our parameter's path in nnx.state(model, nnx.Param)
    conv: Conv


@dataclasses.dataclass(frozen=True)
class HFTensor:
    """One HF tensor: ``name`` (``{i}`` = layer index when ``stacked``) = concat(parts, axis 0)."""

    name: str
    stacked: bool
    parts: tuple[Part, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        rows = sum(p.conv.hf_shape[0] for p in self.parts)
        return (rows, *self.parts[0].conv.hf_shape[1:])

    def names(self, num_layers: int) -> list[str]:
        return [self.name.format(i=i) for i in range(num_layers)] if self.stacked else [self.name]


def _ident(*shape: int) -> Conv:
    return Conv(tuple(shape), tuple(shape), tuple(range(len(shape))))


def _linear_in(out_heads: int, head_dim: int, d_in: int) -> Conv:
    """HF [heads*head_dim, in] <-> ours [in, heads, head_dim]."""
    return Conv((out_heads * head_dim, d_in), (out_heads, head_dim, d_in), (2, 0, 1))


def hf_layout(c: ModelConfig) -> list[HFTensor]:
    """Every HF tensor of this config, in HF naming, with its parts."""
    D, F, H, K, Dh, V = c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size
    L = "model.layers.{i}."
    A = ("layers", "attn")
    M = ("layers", "mlp")
    out: list[HFTensor] = [HFTensor("model.embed_tokens.weight", False, (Part(("embed", "embedding"), _ident(V, D)),))]

    def t(name, *parts):
        out.append(HFTensor(L + name, True, tuple(parts)))

    q = Part(A + ("q_proj", "kernel"), _linear_in(H, Dh, D))
    k = Part(A + ("k_proj", "kernel"), _linear_in(K, Dh, D))
    v = Part(A + ("v_proj", "kernel"), _linear_in(K, Dh, D))
    if c.fused_qkv:
        t("self_attn.qkv_proj.weight", q, k, v)
    else:
        t("self_attn.q_proj.weight", q)
        t("self_attn.k_proj.weight", k)
        t("self_attn.v_proj.weight", v)
    if c.qkv_bias:
        for name, n in (("q", H), ("k", K), ("v", K)):
            t(f"self_attn.{name}_proj.bias", Part(A + (f"{name}_proj", "bias"), Conv((n * Dh,), (n, Dh), (0, 1))))
    t("self_attn.o_proj.weight", Part(A + ("o_proj", "kernel"), Conv((D, H * Dh), (D, H, Dh), (1, 2, 0))))
    if c.o_bias:
        t("self_attn.o_proj.bias", Part(A + ("o_proj", "bias"), _ident(D)))
    if c.qk_norm:
        t("self_attn.q_norm.weight", Part(A + ("q_norm", "scale"), _ident(Dh)))
        t("self_attn.k_norm.weight", Part(A + ("k_norm", "scale"), _ident(Dh)))
    gate = Part(M + ("gate_proj", "kernel"), Conv((F, D), (F, D), (1, 0)))
    up = Part(M + ("up_proj", "kernel"), Conv((F, D), (F, D), (1, 0)))
    if c.fused_gate_up:
        t("mlp.gate_up_proj.weight", gate, up)
    else:
        t("mlp.gate_proj.weight", gate)
        t("mlp.up_proj.weight", up)
    t("mlp.down_proj.weight", Part(M + ("down_proj", "kernel"), Conv((D, F), (D, F), (1, 0))))
    if c.mlp_bias:
        t("mlp.gate_proj.bias", Part(M + ("gate_proj", "bias"), _ident(F)))
        t("mlp.up_proj.bias", Part(M + ("up_proj", "bias"), _ident(F)))
        t("mlp.down_proj.bias", Part(M + ("down_proj", "bias"), _ident(D)))
    t("input_layernorm.weight", Part(("layers", "attn_norm", "scale"), _ident(D)))
    if c.post_norms:  # Gemma 2 naming: post_attention_layernorm is the attention *output* norm
        t("post_attention_layernorm.weight", Part(("layers", "post_attn_norm", "scale"), _ident(D)))
        t("pre_feedforward_layernorm.weight", Part(("layers", "mlp_norm", "scale"), _ident(D)))
        t("post_feedforward_layernorm.weight", Part(("layers", "post_mlp_norm", "scale"), _ident(D)))
    else:
        t("post_attention_layernorm.weight", Part(("layers", "mlp_norm", "scale"), _ident(D)))
    out.append(HFTensor("model.norm.weight", False, (Part(("final_norm", "scale"), _ident(D)),)))
    if c.num_labels > 0:
        out.append(HFTensor("score.weight", False,
                            (Part(("score_head", "kernel"), Conv((c.num_labels, D), (c.num_labels, D), (1, 0))),)))
    elif not c.tie_embeddings:
        out.append(HFTensor("lm_head.weight", False, (Part(("lm_head", "kernel"), _ident(V, D)),)))
    return out


# ---------------------------------------------------------------------- helpers
def _path_key(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _flatten(tree, is_leaf=None) -> tuple[dict[tuple[str, ...], Any], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return {tuple(_path_key(k) for k in path): leaf for path, leaf in leaves}, treedef


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _dtype_name(dtype) -> str:
    if isinstance(dtype, str):
        return dtype
    return {jnp.dtype(jnp.float32): "float32", jnp.dtype(jnp.bfloat16): "bfloat16",
            jnp.dtype(jnp.float16): "float16"}[jnp.dtype(dtype)]


class _Checkpoint:
    """Name -> (file, view) over a single file or a sharded index."""

    def __init__(self, path: str):
        single, index = os.path.join(path, SINGLE_FILE), os.path.join(path, INDEX_FILE)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                try:
                    weight_map = json.load(f)["weight_map"]
                except (json.JSONDecodeError, KeyError) as e:
                    raise ModelError(f"{index}: invalid index ({e!r})") from None
            self.source = INDEX_FILE
            files = {}
            for fname in sorted(set(weight_map.values())):
                fpath = os.path.join(path, fname)
                if not os.path.isfile(fpath):
                    raise InputNotFound(f"{fpath}: listed in {INDEX_FILE} but missing")
                files[fname] = SafetensorsFile(fpath)
            self.where = {}
            for name, fname in weight_map.items():
                if name not in files[fname].entries:
                    raise ModelError(f"{fname}: tensor {name!r} listed in {INDEX_FILE} is not in the file")
                self.where[name] = files[fname]
        elif os.path.isfile(single):
            self.source = SINGLE_FILE
            f = SafetensorsFile(single)
            self.where = {name: f for name in f.entries}
        else:
            pickles = sorted({os.path.basename(p) for pat in _PICKLE_PATTERNS
                              for p in glob.glob(os.path.join(path, pat))})
            if pickles:
                raise InputNotFound(
                    f"{path}: only pickle checkpoint files ({', '.join(pickles)}); lnpo reads safetensors only "
                    f"({SINGLE_FILE} or {INDEX_FILE}) and never unpickles - convert the checkpoint to safetensors"
                )
            raise InputNotFound(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")

    def file_of(self, name: str) -> str:
        return os.path.basename(self.where[name].path)

    def check(self, layout: list[HFTensor], config: ModelConfig) -> None:
        """Every expected tensor present with the expected shape; nothing unexpected."""
        expected = {}
        for t in layout:
            for name in t.names(config.num_layers):
                expected[name] = t.shape
        for name, shape in expected.items():
            if name not in self.where:
                raise ModelError(
                    f"{self.source}: missing tensor {name!r} "
                    f"(expected shape {shape} for model_type {config.model_type!r})"
                )
            dt, got, _, _ = self.where[name].entries[name]
            if got != shape:
                raise ModelError(
                    f"{self.file_of(name)}: tensor {name!r} has shape {got}; config.json implies {shape}"
                )
            if dt not in FLOAT_DTYPES:
                raise ModelError(f"{self.file_of(name)}: tensor {name!r} has non-float dtype {dt}")
        extra = [
            n for n in self.where
            if n not in expected
            and not any(p.match(n) for p in _IGNORED)
            and not (n == "lm_head.weight" and config.tie_embeddings)
        ]
        if extra:
            raise ModelError(
                f"{self.source}: unexpected tensor {extra[0]!r}"
                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                + f" for model_type {config.model_type!r} with this config.json"
            )

    def view(self, name: str) -> np.ndarray:
        return self.where[name].array(name)


# ---------------------------------------------------------------------- loading
def _part_views(ckpt: _Checkpoint, t: HFTensor, name: str) -> dict[tuple[str, ...], np.ndarray]:
    """Lazy views of each part of HF tensor ``name`` in our per-layer layout."""
    full = ckpt.view(name)
    out, row = {}, 0
    for p in t.parts:
        rows = p.conv.hf_shape[0]
        out[p.path] = p.conv.to_ours(full[row : row + rows])
        row += rows
    return out


def check_pretrained(path: str) -> ModelConfig:
    """The directory's ModelConfig, after checking that its config.json maps and its safetensors hold every
    expected tensor with the expected shape and a float dtype (headers only: no weight is read)."""
    config = ModelConfig.from_hf(read_config(path))
    _Checkpoint(path).check(hf_layout(config), config)
    return config


def from_pretrained(
    path: str,
    *,
    dtype: Any = "float32",
    compute_dtype: Any = None,
    mesh=None,
    rules=None,
    **config_overrides,
) -> Decoder:
    """Load a local HF model directory (config.json + safetensors) as a :class:`Decoder`.

    dtype: parameter dtype ("float32" / "bfloat16" or a jnp dtype).
    compute_dtype: activation/matmul dtype (default: ``dtype``).
    mesh, rules: place each parameter with ``lnpo.parallel.named_sharding(mesh, axes,
    rules, shape=...)`` (rules default ``lnpo.parallel.DEFAULT_RULES``; a dimension its
    mesh axis does not divide is replicated over it);
    without a mesh everything goes to the first device.
    config_overrides: other ModelConfig fields, e.g. ``remat="full"``.

    Raises FileNotFoundError (no directory / config.json / safetensors, or
    pickle-only checkpoints) or ValueError naming the field, file or tensor.
    """
    config = model_config(  # a ModelError naming <path>/config.json for what lnpo cannot map
        path,
        param_dtype=_dtype_name(dtype),
        compute_dtype=_dtype_name(compute_dtype if compute_dtype is not None else dtype),
        **config_overrides,
    )
    ckpt = _Checkpoint(path)
    layout = hf_layout(config)
    ckpt.check(layout, config)

    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    abs_flat, treedef = _flatten(abs_state, is_leaf=_is_var)
    axes_flat, _ = _flatten(logical_axes(abstract), is_leaf=lambda x: isinstance(x, tuple))
    rules = DEFAULT_RULES if rules is None else rules
    np_dtype = np.dtype(dtype_of(config.param_dtype))

    owner: dict[tuple[str, ...], HFTensor] = {p.path: t for t in layout for p in t.parts}
    missing = set(abs_flat) - set(owner)
    if missing:  # a layout bug, not a checkpoint problem
        raise AssertionError(f"no HF tensor maps to parameters {sorted(missing)}")

    values = {}
    for ppath, var in abs_flat.items():
        t = owner[ppath]
        if mesh is None:
            sharding = SingleDeviceSharding(jax.devices()[0])
        else:
            sharding = named_sharding(mesh, axes_flat[ppath], rules, shape=tuple(var.shape))

        def cb(index, t=t, ppath=ppath):
            if not t.stacked:
                return np.asarray(_part_views(ckpt, t, t.name)[ppath][index]).astype(np_dtype)
            layer_idx, rest = index[0], index[1:]
            layers = range(config.num_layers)[layer_idx]
            return np.stack(
                [np.asarray(_part_views(ckpt, t, t.name.format(i=i))[ppath][rest]).astype(np_dtype) for i in layers]
            )

        array = jax.make_array_from_callback(tuple(var.shape), sharding, cb)
        values[ppath] = var.replace(array)
    state = jax.tree_util.tree_unflatten(treedef, [values[p] for p in abs_flat])
    return nnx.merge(graphdef, state)


# ---------------------------------------------------------------------- saving
def _to_host(x: jax.Array) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B)\s*", size.upper())
    if not m:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or e.g. '5GB'")
    return int(float(m.group(1)) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[m.group(2)])


def save_pretrained(
    model: Decoder,
    path: str,
    tokenizer=None,
    *,
    dtype: Any = None,
    max_shard_size: int | str = "5GB",
) -> None:
    """Write ``config.json``, ``generation_config.json`` and safetensors that
    ``transformers.AutoModelForCausalLM`` (or ``AutoModelForSequenceClassification``
    when ``num_labels > 0``) loads unchanged.

    Tensors are gathered and written one layer slice at a time; above
    ``max_shard_size`` bytes the weights are split into
    ``model-0000k-of-0000n.safetensors`` with ``model.safetensors.index.json``.
    dtype: storage dtype (default: the parameters' dtype). Only process 0 writes.
    """
    config: ModelConfig = model.config
    out_dtype_name = _dtype_name(dtype) if dtype is not None else config.param_dtype
    out_np = np.dtype(dtype_of(out_dtype_name))
    hf_cfg = config.replace(param_dtype=out_dtype_name).to_hf()
    layout = hf_layout(config)
    params = {k: v[...] for k, v in _flatten(nnx.state(model, nnx.Param), is_leaf=_is_var)[0].items()}
    writer_proc = jax.process_index() == 0

    shards = _plan_shards(layout, config.num_layers, out_np.itemsize, _parse_size(max_shard_size))
    if writer_proc:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "model*.safetensors")) + glob.glob(os.path.join(path, INDEX_FILE)):
            os.remove(stale)
    n = len(shards)
    fnames = [SINGLE_FILE] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    weight_map, total = {}, 0
    # Host copies of the current HF tensor's parameters; entries are tensor-major
    # (all layers of one tensor in a row), so one stacked parameter is on the host at a time.
    host: dict[tuple[str, ...], np.ndarray] = {}
    current: list[HFTensor | None] = [None]

    def fetch(t: HFTensor, ppath: tuple[str, ...]) -> np.ndarray:
        if current[0] is not t:
            host.clear()
            current[0] = t
        if ppath not in host:
            host[ppath] = _to_host(params[ppath])
        return host[ppath]

    for fname, shard in zip(fnames, shards):
        specs = [(name, t.shape, out_np) for name, t, _ in shard]
        writer = SafetensorsWriter(os.path.join(path, fname), specs) if writer_proc else None
        for name, t, layer in shard:
            pieces = []
            for p in t.parts:
                x = fetch(t, p.path)
                x = x[layer] if t.stacked else x
                pieces.append(p.conv.to_hf(x))
            arr = np.concatenate(pieces, axis=0).astype(out_np) if len(pieces) > 1 else pieces[0].astype(out_np)
            if writer is not None:
                writer.write(name, arr)
            weight_map[name] = fname
            total += arr.nbytes
        if writer is not None:
            writer.close()
    if writer_proc:
        _write_metadata(path, hf_cfg, tokenizer, weight_map if n > 1 else None, total)


def _plan_shards(layout, num_layers: int, itemsize: int, limit: int) -> list[list[tuple[str, HFTensor, int]]]:
    """The HF tensors in file order, ``(name, tensor, layer or -1)``, cut into shards of at most ``limit``
    bytes (a tensor larger than the limit gets a shard of its own)."""
    shards: list[list[tuple[str, HFTensor, int]]] = [[]]
    size = 0
    for t in layout:
        for name in t.names(num_layers):
            nbytes = int(np.prod(t.shape)) * itemsize
            if shards[-1] and size + nbytes > limit:
                shards.append([])
                size = 0
            layer = int(re.match(r"model\.layers\.(\d+)\.", name).group(1)) if t.stacked else -1
            shards[-1].append((name, t, layer))
            size += nbytes
    return shards


def _write_metadata(path: str, hf_cfg: dict, tokenizer, weight_map: dict | None, total: int) -> None:
    """``config.json``, ``generation_config.json``, the shard index (``weight_map`` None: one file) and the
    tokenizer's files."""
    if weight_map is not None:
        with open(os.path.join(path, INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_cfg, f, indent=2)
    gen = {k: hf_cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf_cfg.get(k) is not None}
    with open(os.path.join(path, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump({**gen, "_from_model_config": True}, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


__all__: Sequence[str] = ("from_pretrained", "save_pretrained", "hf_layout", "read_config")
