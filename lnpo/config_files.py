"""The one way a config file becomes a ``ConfigDict``, for ``lnpo.main``, ``lnpo.sweep`` and ``lnpo.plan``.

A config file is a Python file defining ``get_config(arg=None)`` (big_vision's style);
``path:arg`` passes ``arg``. Config files import ``configs.base``, so the directory
holding ``configs/`` (:func:`configs_root`) goes on ``sys.path`` first.

- The command line (:func:`define_config_flag`): ``--config=path[:arg]`` plus
  ``--config.<field>=<value>`` overrides, parsed by ml_collections' config flag.
- Python (:func:`load_config`, :func:`load_module`): the same file, the same ``arg``,
  no overrides (the sweep applies its own).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import ml_collections

from lnpo.errors import InputNotFound

__all__ = ["configs_root", "define_config_flag", "load_config", "load_module", "recipe_file", "split_spec"]


def configs_root(path: str | None = None) -> str:
    """The directory holding ``configs/`` (what must be on sys.path for ``import configs.base``).

    From a config file's path: the parent of its nearest ancestor directory named
    ``configs``; otherwise the current directory if it has ``configs/``, else the
    directory above the ``lnpo`` package.
    """
    if path:
        d = os.path.dirname(os.path.abspath(path))
        while d and os.path.dirname(d) != d:
            if os.path.basename(d) == "configs":
                return os.path.dirname(d)
            d = os.path.dirname(d)
    if os.path.isdir(os.path.join(os.getcwd(), "configs")):
        return os.getcwd()
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def on_path(root: str) -> None:
    """Put ``root`` first on ``sys.path`` (once)."""
    if root not in sys.path:
        sys.path.insert(0, root)


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"path:arg"`` -> ``("path", "arg")``; ``"path"`` -> ``("path", None)``."""
    path, sep, arg = spec.partition(":")
    return path, (arg if sep else None)


def load_module(path: str, root: str | None = None):
    """Execute the config file at ``path`` as a fresh module (``root``, default :func:`configs_root`, on sys.path)."""
    if not os.path.isfile(path):
        raise InputNotFound(f"{path}: no such config file")
    on_path(root or configs_root(path))
    name = "lnpo_config_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(path))
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def recipe_file(name: str) -> str:
    """``configs/<name>.py`` of lnpo's own configs (next to the ``lnpo`` package, else under the current
    directory): where lnpo finds a recipe it applies itself (``sft``: the embedded model's SFT stage)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (here, os.getcwd()):
        path = os.path.join(root, "configs", f"{name}.py")
        if os.path.isfile(path):
            return path
    raise InputNotFound(f"configs/{name}.py: lnpo's {name} recipe is not next to the lnpo package ({here}) "
                        f"nor under the current directory")


def load_config(spec: str, root: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of the file ``spec = path[:arg]`` (``get_config()`` without an arg)."""
    path, arg = split_spec(spec)
    module = load_module(path, root)
    return module.get_config(arg) if arg is not None else module.get_config()


def _config_arguments(argv: list[str]) -> list[str]:
    """The values of ``--config=X`` / ``--config X`` in ``argv``."""
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            out.append(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(argv):
            out.append(argv[i + 1])
    return out


def define_config_flag(argv: list[str], help_string: str = "ml_collections config file (path[:arg])",
                       flag_values=None) -> None:
    """Define the locked ``--config`` flag of an entry point (``--config.<field>`` overrides included) and put
    the configs root of the file ``argv`` names on sys.path, so its ``import configs.base`` works."""
    from absl import flags
    from ml_collections import config_flags

    for spec in _config_arguments(argv):
        on_path(configs_root(split_spec(spec)[0]))
    config_flags.DEFINE_config_file("config", None, help_string, lock_config=True, sys_argv=argv,
                                    flag_values=flag_values or flags.FLAGS)
