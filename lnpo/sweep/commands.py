"""``--print_commands``: one ``python -m lnpo.main`` line per run, for launching runs elsewhere."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import ml_collections

from lnpo.sweep.grid import expand
from lnpo.sweep.spec import RunSpec


def missing_fields(spec: RunSpec) -> list[str]:
    """Overrides of ``spec`` that its method config file does not define (``lnpo.main`` rejects them)."""
    base = spec.base_config()
    missing = []
    for key in spec.overrides:
        node = base
        for part in key.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    return missing


def print_commands(sweep: ml_collections.ConfigDict, workdir: str, *, config_root: str | None = None,
                   only: Sequence[str] | None = None, python: str = "python", file=None,
                   warn: Callable[[str], None] | None = None) -> list[str]:
    """Print (and return) one ``python -m lnpo.main`` command per run; warns (``warn``, default
    stderr) about overrides that the method config files do not define."""
    file = file or sys.stdout
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    specs = expand(sweep, workdir, config_root=config_root, only=only)
    missing: set[str] = set()
    lines = []
    for spec in specs:
        missing.update(missing_fields(spec))
        line = spec.command(python=python)
        lines.append(line)
        print(line, file=file)
    if missing:
        warn("lnpo.sweep: warning: lnpo.main cannot set these fields (its config files do not define them): "
             + ", ".join(f"config.{k}" for k in sorted(missing)))
    return lines
