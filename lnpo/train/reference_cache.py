"""Precomputed reference log-probs, shared by every run with the same key.

One pass of the frozen reference over the training set writes, per pair of
the tokenized dataset (in dataset order), the reference's summed completion
log-probs: ``chosen [N] f32`` and ``rejected [N] f32``, and whatever else the
objective needs from the reference (``names``, e.g. LD-DPO's
``chosen_shared``/``rejected_shared``, ``lnpo.train.steps.cached_reference_names``;
the fingerprint's numerics then list them). The file is named by a
fingerprint of the reference weights, the tokenized data and the numerics
(dtype, chunking), so a hyperparameter sweep pays for the reference once and a
changed model or dataset never reads a stale cache. Files are written to a
temporary name and renamed, and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import numpy as np

_HASH_CHUNK = 1 << 24


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def weights_fingerprint(model_dir: str) -> str:
    """SHA-256 over the config and every safetensors file of an HF directory.

    File hashes are memoized in ``<model_dir>/.lnpo_hashes.json`` keyed by
    (size, mtime) when the directory is writable, so later runs do not re-read
    large checkpoints.
    """
    memo_path = os.path.join(model_dir, ".lnpo_hashes.json")
    try:
        with open(memo_path, encoding="utf-8") as f:
            memo = json.load(f)
    except (OSError, ValueError):
        memo = {}
    digest = hashlib.sha256()
    changed = False
    for name in sorted(os.listdir(model_dir)):
        if not (name.endswith(".safetensors") or name == "config.json"):
            continue
        path = os.path.join(model_dir, name)
        stat = os.stat(path)
        key = f"{stat.st_size}:{stat.st_mtime_ns}"
        entry = memo.get(name)
        if not entry or entry.get("key") != key:
            entry = {"key": key, "sha256": _file_sha256(path)}
            memo[name] = entry
            changed = True
        digest.update(name.encode())
        digest.update(entry["sha256"].encode())
    if changed:
        try:
            with open(memo_path, "w", encoding="utf-8") as f:
                json.dump(memo, f)
        except OSError:
            pass
    return digest.hexdigest()


def cache_key(*, weights: str, data: str, numerics: dict) -> str:
    """A short hex key from the weights fingerprint, the tokenized data's fingerprint
    and a dict of numerics settings (dtype, sequence length, chunk size)."""
    payload = json.dumps({"weights": weights, "data": data, "numerics": numerics}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def cache_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, f"reference-{key}.npz")


NAMES = ("chosen", "rejected")


def load(cache_dir: str, key: str, num_pairs: int, names: tuple = NAMES) -> tuple[np.ndarray, ...] | None:
    """The cached arrays ``names`` (default ``(chosen, rejected)``), in that order, or None when absent."""
    path = cache_path(cache_dir, key)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = tuple(np.asarray(f[name]) for name in names)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"reference cache {path}: unreadable ({e}); delete it to recompute") from None
    for a in arrays:
        if a.shape != (num_pairs,):
            raise ValueError(f"reference cache {path}: holds {a.shape[0] if a.ndim else 0} pairs, the dataset has "
                             f"{num_pairs}; delete it to recompute")
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError(f"reference cache {path}: holds non-finite log-probs; delete it to recompute")
    return arrays


def save(cache_dir: str, key: str, *arrays: np.ndarray, names: tuple = NAMES) -> str:
    """Write ``arrays`` under ``names`` (default ``chosen``, ``rejected``) to the cache file of ``key``."""
    if len(arrays) != len(names):
        raise ValueError(f"reference cache: {len(arrays)} arrays for names {names}")
    os.makedirs(cache_dir, exist_ok=True)
    path = cache_path(cache_dir, key)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **{name: np.asarray(a, np.float32) for name, a in zip(names, arrays)})
    os.replace(tmp, path)
    return path


def _agreed_missing(missing_here: bool) -> bool:
    """Whether to compute, agreed by all processes (process 0 decides): ``compute`` is a
    collective, so one process skipping it while others run it would hang them."""
    import jax

    if jax.process_count() == 1:
        return missing_here
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.array(missing_here)))


def load_or_compute(cache_dir: str, key: str, num_pairs: int,
                    compute: Callable[[], tuple[np.ndarray, ...]], *, is_writer: bool = True, names: tuple = NAMES):
    """Return ``(*arrays, computed)``, one array per name (default ``chosen, rejected``); ``compute``
    (returning the arrays in ``names`` order) runs only when no cache exists.

    With several processes, every process runs ``compute`` (it is a collective
    pass over a sharded model) but only ``is_writer`` writes the file.
    """
    cached = load(cache_dir, key, num_pairs, names)
    if not _agreed_missing(cached is None):
        if cached is None:
            raise ValueError(f"reference cache {cache_path(cache_dir, key)}: process 0 has it but this process does "
                             "not; reference.cache_dir must be on storage every host reads")
        return (*cached, False)
    arrays = tuple(compute())
    if is_writer:
        save(cache_dir, key, *arrays, names=names)
    return (*arrays, True)
