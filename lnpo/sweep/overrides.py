"""Dotted run-config overrides: ``{"train.steps": 7}`` <-> nested sections, applied in order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from lnpo.errors import SweepError


# ----------------------------------------------------------------------------- overrides
def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested ConfigDict / dict -> ``{"a.b.c": leaf}`` in the mapping's key order (dotted dict keys are kept)."""
    out: dict[str, Any] = {}
    if tree is None:
        return out
    items = tree.items()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, Mapping)):
            out.update(flatten(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Set dotted ``overrides`` on ``config`` in order. A missing field (or section) is created,
    so overrides may carry fields that ``configs/base.py`` does not define yet; a value of the
    wrong type for an existing field raises :class:`SweepError`."""
    for key, value in overrides.items():
        parts = key.split(".")
        node = config
        for i, part in enumerate(parts[:-1]):
            if part not in node:
                node[part] = ml_collections.ConfigDict()
            node = node[part]
            if not isinstance(node, ml_collections.ConfigDict):
                raise SweepError(f"override {key}: config.{'.'.join(parts[:i + 1])} is not a section")
        try:
            node[parts[-1]] = tuple(value) if isinstance(value, list) else value
        except (TypeError, KeyError) as e:
            raise SweepError(f"override {key}={value!r}: {e}") from None
    return config
