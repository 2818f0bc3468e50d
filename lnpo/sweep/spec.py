"""One run of a sweep: its name, method config file, overrides and grid point; its config and command line."""

from __future__ import annotations

import dataclasses
import os
import shlex

import ml_collections

from lnpo import config_files
from lnpo.errors import SweepError
from lnpo.sweep.overrides import apply_overrides


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a sweep.

    name: the run name (``DIR/<name>`` is its workdir); method: the sweep's method key;
    config_path: the method's config file;
    config_root: the directory holding ``configs/``; overrides: dotted run-config overrides in
    application order (shared, method, grid point); point: the grid point
    (``beta``/``gamma``/``lr`` when swept, ``seed``).
    """

    name: str
    method: str
    config_path: str
    config_root: str
    overrides: dict
    point: dict
    workdir: str

    @property
    def evaluate(self) -> bool:
        return bool(self.overrides.get("eval.enabled", True))

    def base_config(self) -> ml_collections.ConfigDict:
        """The method config file's ``get_config()``, without the sweep's overrides."""
        return config_files.load_config(self.config_path, self.config_root)

    def config(self) -> ml_collections.ConfigDict:
        """The run's config: :meth:`base_config` with :attr:`overrides` applied."""
        return apply_overrides(self.base_config(), self.overrides)

    def command(self, python: str = "python", workdir: str | None = None) -> str:
        """The ``python -m lnpo.main`` line that runs this run on its own."""
        path = self.config_path
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            path = rel
        args = [python, "-m", "lnpo.main", f"--config={path}", f"--workdir={workdir or self.workdir}"]
        args += [f"--config.{k}={_flag_value(k, v)}" for k, v in self.overrides.items()]
        return " ".join(shlex.quote(a) for a in args)


def _flag_value(key: str, value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return repr(value)
    raise SweepError(f"override {key}={value!r}: cannot be written as a command-line flag")
