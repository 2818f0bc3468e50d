"""Content digests shared by the package (stdlib only, cheap to import)."""

from __future__ import annotations

import hashlib

_BLOCK = 1 << 24  # 16 MiB read at a time: a multi-GB weights file is hashed in constant memory


def file_sha256(path: str) -> str:
    """Hex SHA-256 of the bytes of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
