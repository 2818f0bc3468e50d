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
temporary name and renamed, carry a SHA-256 of their arrays (checked on every
load: a cache that fails it is recomputed, never used) and are read with
``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from lnpo.digest import file_sha256
from lnpo.errors import CheckpointError

MEMO_NAME = "weights_sha256.json"


def _file_identity(stat: os.stat_result) -> str:
    """What must be unchanged for a memoized content hash to be reused: size, mtime, inode, device and ctime.

    ``ctime`` is set by the kernel on every write or rename onto the file and cannot be set back
    by ``touch``/``cp -p``/``os.utime``, so weights replaced with their size and mtime preserved
    still get a new identity (and are hashed again).
    """
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}:{stat.st_dev}:{stat.st_ctime_ns}"


def weights_fingerprint(model_dir: str, memo_dir: str) -> str:
    """SHA-256 over the content of ``config.json`` and every safetensors file of an HF directory.

    Each file's SHA-256 is memoized in ``<memo_dir>/weights_sha256.json`` (the trainer passes the
    runs root; never the model directory: an input is only read), keyed by the file's real
    path and :func:`_file_identity`, so later runs do not re-read large checkpoints. A file whose
    identity changed is hashed again.
    """
    memo_path = os.path.join(memo_dir, MEMO_NAME)
    try:
        with open(memo_path, encoding="utf-8") as f:
            memo = json.load(f)
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    digest = hashlib.sha256()
    changed = False
    for name in sorted(os.listdir(model_dir)):
        if not (name.endswith(".safetensors") or name == "config.json"):
            continue
        path = os.path.realpath(os.path.join(model_dir, name))
        identity = _file_identity(os.stat(path))
        entry = memo.get(path)
        if not isinstance(entry, dict) or entry.get("identity") != identity or "sha256" not in entry:
            entry = {"identity": identity, "sha256": file_sha256(path)}
            memo[path] = entry
            changed = True
        digest.update(name.encode())
        digest.update(str(entry["sha256"]).encode())
    if changed:
        try:
            _write_json_atomically(memo_path, memo)
        except OSError:
            pass  # a read-only cache directory only costs re-hashing next time
    return digest.hexdigest()


def _write_json_atomically(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"  # hosts sharing the directory never collide
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def cache_key(*, weights: str, data: str, numerics: dict) -> str:
    """A short hex key from the weights fingerprint, the tokenized data's fingerprint
    and a dict of numerics settings (dtype, sequence length, chunk size)."""
    payload = json.dumps({"weights": weights, "data": data, "numerics": numerics}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def cache_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, f"reference-{key}.npz")


NAMES = ("chosen", "rejected")


def arrays_sha256(key: str, *arrays: np.ndarray) -> str:
    """SHA-256 of the cache key and the arrays' float32 little-endian bytes, in that order."""
    digest = hashlib.sha256(key.encode())
    for values in arrays:
        digest.update(np.ascontiguousarray(values, dtype="<f4").tobytes())
    return digest.hexdigest()


def _read(path: str, key: str, num_pairs: int, names: tuple) -> tuple[np.ndarray, ...]:
    """The verified arrays ``names`` of ``path``; raises ``ValueError`` with the reason when they cannot be trusted."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = tuple(np.asarray(f[name]) for name in names)
            recorded = str(f["sha256"]) if "sha256" in f.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if recorded is None:
        raise ValueError("no checksum")
    for a in arrays:
        if a.shape != (num_pairs,):
            raise ValueError(f"holds {a.shape} log-probs, the dataset has {num_pairs} pairs")
    if arrays_sha256(key, *arrays) != recorded:
        raise ValueError("its arrays do not match their checksum")
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("holds non-finite log-probs")
    return tuple(a.astype(np.float32) for a in arrays)


def load(cache_dir: str, key: str, num_pairs: int, names: tuple = NAMES) -> tuple[np.ndarray, ...] | None:
    """The cached arrays ``names`` (default ``(chosen, rejected)``), in that order, or None when
    absent or not trustworthy.

    A cache that is unreadable (truncated, empty), of the wrong size, or whose arrays differ
    from the SHA-256 stored with them (:func:`arrays_sha256`: altered values, chosen and
    rejected swapped, a file copied under another key) is reported in one line and recomputed.
    """
    path = cache_path(cache_dir, key)
    if not os.path.exists(path):
        return None
    try:
        return _read(path, key, num_pairs, names)
    except ValueError as e:
        print(f"lnpo: reference cache {path}: {e}; recomputing it", flush=True)
        return None


def save(cache_dir: str, key: str, *arrays: np.ndarray, names: tuple = NAMES) -> str:
    """Write ``arrays`` under ``names`` (default ``chosen``, ``rejected``) to the cache file of ``key``."""
    if len(arrays) != len(names):
        raise ValueError(f"reference cache: {len(arrays)} arrays for names {names}")
    os.makedirs(cache_dir, exist_ok=True)
    path = cache_path(cache_dir, key)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    arrays = tuple(np.asarray(a, np.float32) for a in arrays)
    np.savez(tmp, **dict(zip(names, arrays)), sha256=np.array(arrays_sha256(key, *arrays)))
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


def load_or_make(load_cached: Callable[[], Any], make: Callable[[], Any], save_made: Callable[[Any], Any], *,
                 name: str, storage: str, is_writer: bool = True) -> tuple[Any, bool]:
    """``(value, made)``: ``load_cached()`` (None when absent), else ``make()``, then ``save_made(value)`` by
    the writer. Every process makes the value when process 0 finds no cache (making it is a collective over a
    sharded model); a process that misses a cache process 0 has raises one CheckpointError naming ``name``
    and the setting (``storage``) that must point at storage every host reads."""
    cached = load_cached()
    if not _agreed_missing(cached is None):
        if cached is None:
            raise CheckpointError(f"{name}: process 0 has it but this process does not; {storage} must be on "
                                  "storage every host reads")
        return cached, False
    value = make()
    if is_writer:
        save_made(value)
    return value, True


def load_or_compute(cache_dir: str, key: str, num_pairs: int,
                    compute: Callable[[], tuple[np.ndarray, ...]], *, is_writer: bool = True, names: tuple = NAMES):
    """Return ``(*arrays, computed)``, one array per name (default ``chosen, rejected``); ``compute``
    (returning the arrays in ``names`` order) runs only when no cache exists (:func:`load_or_make`)."""
    arrays, computed = load_or_make(
        lambda: load(cache_dir, key, num_pairs, names), lambda: tuple(compute()),
        lambda made: save(cache_dir, key, *made, names=names),
        name=f"reference cache {cache_path(cache_dir, key)}", storage="reference.cache_dir", is_writer=is_writer)
    return (*arrays, computed)
