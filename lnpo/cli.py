"""The entry points' one error rule: a :class:`~lnpo.errors.UserError` is one line, anything else a traceback.

``python -m lnpo.main``, ``lnpo.evaluate``, ``lnpo.sweep``, ``lnpo.plan`` and ``lnpo.report`` run
their work through :func:`report_user_errors`:

- a :class:`~lnpo.errors.UserError` prints ``<prog>: error: <message>`` and exits 2
  (:class:`~lnpo.errors.LostPeer`: 3);
- an error in which JAX reports that another process of a multi-process job is gone exits 3;
- anything else is a bug and propagates with its traceback (in a multi-process job the
  traceback is printed and the process exits 1 at once, see :func:`fail`).

``LNPO_DEBUG=1`` shows the traceback of a user error too.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn, TypeVar

from lnpo.errors import LostPeer, UserError

# Exit statuses. Bad input (config, data, checkpoint): 2. Another process of a multi-process job died:
# 3. Stopped by SIGTERM after saving a checkpoint: 75 (EX_TEMPFAIL); rerun the same command to resume
# (launch/tpu/train.sh does so).
EXIT_BAD_INPUT = 2
EXIT_LOST_PEER = 3
EXIT_PREEMPTED = 75

T = TypeVar("T")


def _distributed_initialized() -> bool:
    if "jax" not in sys.modules:  # lnpo.report never imports JAX: it has no peers
        return False
    import jax

    return jax.distributed.is_initialized()


def fail(prog: str, message: str, code: int) -> NoReturn:
    """Print ``<prog>: error: <message>`` and exit with ``code``.

    In a multi-process job the exit skips Python's shutdown (``os._exit``): that would first
    wait at JAX's shutdown barrier for every other process, and after a failure some never come.
    Leaving at once closes this process's connections, so its peers fail fast too.
    """
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.stderr.flush()
    if _distributed_initialized():
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (a KeyError's message without its quotes)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(error).__name__


def report_user_errors(prog: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)``, with the error rule of the module docstring."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        if os.environ.get("LNPO_DEBUG"):
            traceback.print_exc()
        fail(prog, one_line(e), EXIT_LOST_PEER if isinstance(e, LostPeer) else EXIT_BAD_INPUT)
    except Exception as e:
        if not _distributed_initialized():
            raise
        import jax

        from lnpo.train import distributed

        where = f"process {jax.process_index()} of {jax.process_count()}"
        if distributed.lost_peer(e):
            fail(prog, f"{where} lost another process of this job ({distributed.first_line(e)}); that worker's "
                       "log says why. Rerun the job to resume from its last checkpoint.", EXIT_LOST_PEER)
        traceback.print_exc()
        fail(prog, f"{where}: {type(e).__name__} (traceback above)", 1)


def exit_status(prog: str, fn: Callable[..., int], *args, **kwargs) -> int:
    """For a ``main`` that returns its exit status: ``fn``'s status, or a user error's (after its one line)."""
    try:
        return report_user_errors(prog, fn, *args, **kwargs)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
