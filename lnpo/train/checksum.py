"""Content checksums of a pytree of arrays, computed on the arrays' own devices.

For each leaf, with ``w_i`` the leaf's bits as unsigned 32-bit words (a 2-byte dtype is one
word per element, an 8-byte dtype two) and ``i`` the word's linear index::

    weighted = sum_i w_i * (i * 0x9E3779B1 | 1)        mod 2**32
    mixed    = sum_i fmix32(w_i ^ (i * 0x85EBCA77))    mod 2**32

``weighted`` changes under any single flipped bit (its weight is odd, so ``2**k * weight``
is never 0 mod 2**32); ``mixed`` (MurmurHash3's finalizer, non-linear) makes cancelling
multi-word changes unlikely. Both are reductions, so a sharded leaf is summed where it lives
and only ``2`` words per leaf come back to the host. The result is the same for the same
values whatever the sharding or the number of processes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_GOLDEN = np.uint32(0x9E3779B1)
_C2 = np.uint32(0x85EBCA77)


def _words(x: jax.Array) -> jax.Array:
    """``x``'s bits as uint32 words (shape of ``x``, plus a trailing 2 for 8-byte dtypes)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _linear_index(shape) -> jax.Array:
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * np.uint32(stride % (1 << 32))
        stride *= shape[dim]
    return index


def _fmix32(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _leaf_sums(x: jax.Array) -> jax.Array:
    words = _words(x)
    index = _linear_index(words.shape)
    weighted = jnp.sum(words * (index * _GOLDEN | np.uint32(1)), dtype=jnp.uint32)
    mixed = jnp.sum(_fmix32(words ^ (index * _C2)), dtype=jnp.uint32)
    return jnp.stack([weighted, mixed])


@functools.lru_cache(maxsize=8)
def _jitted(treedef):  # noqa: ARG001 (one compiled function per tree structure; jit keys the shardings)
    return jax.jit(lambda leaves: jnp.stack([_leaf_sums(x) for x in leaves]) if leaves else jnp.zeros((0, 2)))


def tree_checksums(tree) -> dict[str, str]:
    """``{leaf path: 16 hex digits}`` for every array leaf of ``tree`` (see the module docstring)."""
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [jax.tree_util.keystr(path) for path, _ in paths_and_leaves]
    leaves = [leaf for _, leaf in paths_and_leaves]
    sums = _jitted(treedef)(leaves)
    if isinstance(sums, jax.Array) and not sums.is_fully_addressable:
        from jax.experimental import multihost_utils

        sums = multihost_utils.process_allgather(sums, tiled=True)
    sums = np.asarray(jax.device_get(sums)).astype(np.uint64)
    return {path: f"{int(a):08x}{int(b):08x}" for path, (a, b) in zip(paths, sums)}


def mismatches(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Leaf paths whose checksum differs, or that one side lacks (sorted)."""
    return sorted(p for p in set(expected) | set(actual) if expected.get(p) != actual.get(p))
