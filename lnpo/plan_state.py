"""Exact per-chip sizes of the arrays the trainer holds: parameters (from the model's real shapes and
logical axes, sharded by the ``lnpo.parallel`` rules on the planned mesh) and AdamW's state."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    path: tuple  # jax key path of the leaf in nnx.state(model, nnx.Param)
    shape: tuple[int, ...]
    axes: tuple  # logical axis names
    itemsize: int


@functools.lru_cache(maxsize=8)
def param_infos(cfg) -> tuple[list[ParamInfo], Any]:
    """Shapes, logical axes and itemsizes of the model's parameters, and the abstract
    parameter state (``jax.ShapeDtypeStruct`` leaves: nothing is allocated)."""
    import jax
    from flax import nnx

    from lnpo.models import Decoder, logical_axes

    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(abstract, nnx.Param)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    axes = jax.tree_util.tree_leaves(logical_axes(abstract), is_leaf=lambda x: isinstance(x, tuple))
    assert len(axes) == len(leaves)
    infos = [ParamInfo(tuple(p), tuple(leaf.shape), tuple(a), leaf.dtype.itemsize)
             for (p, leaf), a in zip(leaves, axes)]
    return infos, state


def shard_shape(shape, axes, mesh: dict[str, int], rules=None) -> tuple[tuple[int, ...], list[str]]:
    """Per-device shape of an array with logical ``axes`` on ``mesh`` ({axis: size}), sharded
    as the trainer shards it (``lnpo.parallel.named_sharding``: a mesh axis that does not
    divide a dimension replicates it), and those replicated dimensions, named."""
    from lnpo.parallel import DEFAULT_RULES, logical_to_spec, spec_entry_axes, uneven_dims

    rules = DEFAULT_RULES if rules is None else rules
    spec = logical_to_spec(axes, rules, shape=shape, mesh_shape=mesh)
    out = []
    for i, dim in enumerate(shape):
        names = spec_entry_axes(spec[i] if i < len(spec) else None)
        out.append(dim // math.prod(mesh[n] for n in names))
    return tuple(out), uneven_dims(axes, shape, mesh, rules)


def per_chip_param_elements(infos, mesh) -> tuple[list[int], list[str]]:
    """Per-chip elements of each parameter, and the logical dimensions replicated because a
    mesh axis does not divide them (e.g. ``"kv_heads 2 over tensor 4"``)."""
    counts, replicated = [], []
    for info in infos:
        shp, uneven = shard_shape(info.shape, info.axes, mesh)
        counts.append(math.prod(shp))
        replicated += uneven
    return counts, sorted(set(replicated))


def optimizer_bytes(config, abstract_params, infos, counts) -> int:
    """Per-chip bytes of the trainer's optimizer state (lnpo.train.optim.make_optimizer): every
    parameter-shaped leaf sharded like its parameter, scalars (step counters) replicated."""
    import jax

    from lnpo.train.optim import make_optimizer

    tx, _ = make_optimizer(config.optim, steps=max(int(config.train.steps), 1))
    by_path = {info.path: (info, n) for info, n in zip(infos, counts)}
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.eval_shape(tx.init, abstract_params))[0]:
        path = tuple(path)
        match = next((by_path[path[i:]] for i in range(len(path)) if path[i:] in by_path), None)
        if match is not None and tuple(leaf.shape) == match[0].shape:
            total += match[1] * leaf.dtype.itemsize
        else:
            total += math.prod(leaf.shape) * leaf.dtype.itemsize  # replicated (step counters)
    return total


@functools.lru_cache(maxsize=8)
def lora_infos(cfg, spec, base_dtype: str) -> tuple[list[ParamInfo], list[ParamInfo], Any]:
    """A LoRA run's arrays: the frozen base's (in ``base_dtype``: "int8" is int8 projection kernels with float32
    per-channel scales and bfloat16 for the rest, as the trainer holds them), the adapters' (float32), and the
    abstract adapter state (what the optimizer sees). Nothing is allocated."""
    import jax
    from flax import nnx

    from lnpo.models import Decoder, lora

    float_dtype = "bfloat16" if base_dtype == "int8" else base_dtype

    def build():
        model = Decoder(cfg.replace(param_dtype=float_dtype), rngs=nnx.Rngs(0))
        lora.add_adapters(model, spec, jax.random.key(0))
        if base_dtype == "int8":
            lora.quantize_base(model)
        return model

    abstract = nnx.eval_shape(build)
    _, adapters, base = lora.split(abstract)

    def infos(state):
        out = []
        variables = jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
        for (path, _), var in zip(jax.tree_util.tree_flatten_with_path(state)[0], variables):
            axes = tuple(var.get_metadata().get("out_sharding") or (None,) * len(var.shape))
            out.append(ParamInfo(tuple(path), tuple(var.shape), axes, var.dtype.itemsize))
        return out

    return infos(base), infos(adapters), adapters
