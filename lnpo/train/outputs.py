"""Where a run may write, checked before any work.

The rules (docs/reliability.md, "Run lifecycle"):

- A run writes only inside its workdir and the runs root (``config.runs_root``: the embedded
  task, the embedded SFT model, the reference cache). Both must be writable directories;
  a read-only one is one :class:`~lnpo.errors.ConfigError` line naming the path before any
  data is read.
- Nothing inside a directory lnpo writes may be a symbolic link (``metrics.jsonl`` or
  ``export/`` linked elsewhere would be rewritten outside): refused in one line. The workdir
  itself may be a link (a user pointing it at scratch storage chose that).
- A workdir is never an input: not the model directory, the tokenizer directory or a data
  directory, nor inside one.
"""

from __future__ import annotations

import errno
import os
import tempfile

from lnpo.errors import ConfigError


def check_writable(path: str, what: str) -> str:
    """Create ``path`` if needed and prove a file can be written there; returns its absolute path."""
    path = os.path.abspath(path)
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".lnpo-write-probe-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        reason = "read-only file system" if e.errno == errno.EROFS else (e.strerror or str(e)).lower()
        raise ConfigError(f"{what} {path}: not writable ({reason})") from None
    return path


def refuse_symlinks(directory: str, what: str) -> None:
    """Raise if anything inside ``directory`` (not following links) is a symbolic link."""
    if not os.path.isdir(directory):
        return
    for root, dirs, files in os.walk(directory, followlinks=False):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                raise ConfigError(f"{what} {directory}: {path} is a symbolic link (to {os.readlink(path)}); lnpo "
                                  "writes only inside its own directories and does not follow links out of them - "
                                  "remove the link")


def refuse_inputs(workdir: str, inputs: dict[str, str]) -> None:
    """Raise if ``workdir`` is one of the ``{config field: path}`` input directories or inside one."""
    here = os.path.realpath(workdir)
    for field, path in inputs.items():
        if not path or not os.path.isdir(path):
            continue
        source = os.path.realpath(path)
        if here == source or here.startswith(source + os.sep):
            raise ConfigError(f"workdir {workdir}: inside config.{field} ({path}); an input directory is only "
                              "read - choose another --workdir")
