"""The sweep file: ``get_config(arg)``, dotted sweep-config overrides, then its ``finalize(sweep)`` hook."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from lnpo import config_files
from lnpo.errors import SweepError
from lnpo.sweep.overrides import apply_overrides


def finalize_sweep(sweep: ml_collections.ConfigDict, path: str) -> ml_collections.ConfigDict:
    """Call the sweep file's ``finalize(sweep)`` (if it has one) after overrides; returns ``sweep``."""
    return _finalize(config_files.load_module(config_files.split_spec(path)[0]), sweep)


def _finalize(module, sweep):
    hook = getattr(module, "finalize", None)
    if hook is None:
        return sweep
    with sweep.unlocked():
        result = hook(sweep)
    return sweep if result is None else result


def load_sweep(spec: str, overrides: Mapping[str, Any] | None = None,
               run_overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """Load a sweep config: ``spec`` is ``path[:arg]``; ``overrides`` maps dotted sweep-config
    keys (``"methods.dpo.beta"``, ``"overrides.train.steps"``, ``"sft_path"``) to values,
    applied before the file's ``finalize``; a key that the file does not define is an error.
    ``run_overrides``: dotted run-config keys (``"train.steps"``, ``"model.path"``) added to
    ``sweep.overrides`` after ``finalize`` (as ``--set`` does), so they apply to every run."""
    path, arg = config_files.split_spec(spec)
    module = config_files.load_module(path)
    sweep = module.get_config(arg) if arg is not None else module.get_config()
    for key, value in (overrides or {}).items():
        node, parts = sweep, key.split(".")
        for part in parts[:-1]:
            if part not in node:
                raise SweepError(f"sweep override {key!r}: the sweep config has no field {part!r}")
            node = node[part]
        if parts[-1] not in node:
            raise SweepError(f"sweep override {key!r}: the sweep config has no field {parts[-1]!r}")
        try:
            node[parts[-1]] = tuple(value) if isinstance(value, list) else value
        except TypeError as e:
            raise SweepError(f"sweep override {key}={value!r}: {e}") from None
    sweep = _finalize(module, sweep)
    return set_run_overrides(sweep, run_overrides or {})


def set_run_overrides(sweep: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Add dotted run-config ``overrides`` to ``sweep.overrides`` (every run gets them); returns ``sweep``."""
    if overrides:
        with sweep.unlocked():
            if sweep.get("overrides") is None:
                sweep.overrides = ml_collections.ConfigDict()
            apply_overrides(sweep.overrides, overrides)
    return sweep
