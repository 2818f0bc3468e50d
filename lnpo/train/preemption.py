"""SIGTERM (how TPU VMs are preempted) becomes a flag the loop reads at step boundaries.

One flag per process (:func:`process_flag`): ``lnpo.train.run.run`` installs it before any
work, so a SIGTERM while data is loaded, the reference pass runs or the embedded SFT stage
trains is a clean stop (exit 75) at the next boundary, never a kill by the default handler.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class PreemptionFlag:
    """Set by SIGTERM; :meth:`should_stop` agrees across processes.

    :meth:`install` and :meth:`uninstall` nest: the handler stays until the outermost
    ``uninstall``.
    """

    def __init__(self):
        self._event = threading.Event()
        self._previous = None
        self._depth = 0

    def install(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():
            if self._depth == 0:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._depth += 1
        return self

    def uninstall(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
            self._event.clear()

    def _handle(self, signum, frame):  # noqa: ARG002
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def should_stop(self) -> bool:
        """True once any process received SIGTERM (a collective when there are several)."""
        local = self._event.is_set()
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array([local], dtype=np.int32))
        return bool(np.asarray(flags).any())


_PROCESS_FLAG = PreemptionFlag()


def process_flag() -> PreemptionFlag:
    """This process's one flag (install it with ``process_flag().install()``)."""
    return _PROCESS_FLAG
