"""Minimal safetensors reader/writer on numpy memory maps (bfloat16 via ml_dtypes).

Reading maps the file and returns zero-copy views, so slicing a tensor reads
only the bytes of that slice; nothing is ever unpickled. Writing streams one
tensor at a time after a header computed from the declared shapes.

Format: 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``
(padded with spaces to a multiple of 8), then the tensors' bytes back to back.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Sequence

import ml_dtypes
import numpy as np

from lnpo.errors import ModelError

_TO_NUMPY = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def dtype_name(dtype) -> str:
    """safetensors dtype string ("F32", "BF16", ...) of a numpy/jax dtype."""
    dt = np.dtype(dtype)
    if dt not in _FROM_NUMPY:
        raise ValueError(f"dtype {dt} cannot be stored in safetensors")
    return _FROM_NUMPY[dt]


class SafetensorsFile:
    """Read-only view of one ``.safetensors`` file.

    ``entries[name] = (dtype_str, shape, begin, end)``; :meth:`array` returns a
    memory-mapped numpy view (no bytes read until indexed).
    """

    def __init__(self, path: str):
        self.path = path
        name = os.path.basename(path)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelError(f"{name}: not a safetensors file (shorter than 8 bytes)")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > size - 8 or hlen > 100_000_000:
                raise ModelError(f"{name}: not a safetensors file (header length {hlen} > file size {size})")
            try:
                header = json.loads(f.read(hlen))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ModelError(f"{name}: corrupt safetensors header ({e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + hlen
        data_size = size - self.data_start
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for tname, e in header.items():
            dt, shape, (begin, end) = e["dtype"], tuple(int(s) for s in e["shape"]), e["data_offsets"]
            if dt not in _TO_NUMPY:
                raise ModelError(f"{name}: tensor {tname!r} has unsupported dtype {dt}")
            nbytes = int(np.prod(shape, dtype=np.int64)) * _TO_NUMPY[dt].itemsize
            if end - begin != nbytes or begin < 0 or end > data_size:
                raise ModelError(f"{name}: tensor {tname!r} has inconsistent data_offsets {[begin, end]} "
                                 f"for shape {shape} {dt}")
            self.entries[tname] = (dt, shape, int(begin), int(end))
        self._mmap: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self.entries)

    def array(self, tname: str) -> np.ndarray:
        """Zero-copy read-only view of tensor ``tname``."""
        dt, shape, begin, end = self.entries[tname]
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._mmap[self.data_start + begin : self.data_start + end]
        return raw.view(_TO_NUMPY[dt]).reshape(shape)


class SafetensorsWriter:
    """Write tensors declared up front, streaming their bytes one at a time.

    ``specs``: ordered ``(name, shape, numpy dtype)``; then call :meth:`write`
    once per spec in the same order.
    """

    def __init__(self, path: str, specs: Sequence[tuple[str, Sequence[int], object]], metadata: dict | None = None):
        self.path = path
        self.specs = [(n, tuple(int(s) for s in shape), np.dtype(dt)) for n, shape, dt in specs]
        header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        for n, shape, dt in self.specs:
            nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            header[n] = {"dtype": dtype_name(dt), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._file = open(path, "wb")
        self._file.write(struct.pack("<Q", len(blob)))
        self._file.write(blob)
        self._next = 0

    def write(self, name: str, array: np.ndarray) -> None:
        exp_name, shape, dt = self.specs[self._next]
        if name != exp_name or tuple(array.shape) != shape or np.dtype(array.dtype) != dt:
            raise ValueError(f"{os.path.basename(self.path)}: expected {exp_name} {shape} {dt}, "
                             f"got {name} {array.shape} {array.dtype}")
        self._file.write(np.ascontiguousarray(array).tobytes())
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.specs):
            self._file.close()
            raise ValueError(f"{os.path.basename(self.path)}: {len(self.specs) - self._next} "
                             "declared tensors were not written")
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def write_file(path: str, tensors: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write a small dict-like iterable of arrays at once (tests, tiny files)."""
    items = list(tensors)
    with SafetensorsWriter(path, [(n, a.shape, a.dtype) for n, a in items]) as w:
        for n, a in items:
            w.write(n, a)
