"""SIGTERM (how TPU VMs are preempted) becomes a flag the loop reads at step boundaries."""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class PreemptionFlag:
    """Set by SIGTERM; :meth:`should_stop` agrees across processes."""

    def __init__(self):
        self._event = threading.Event()
        self._previous = None

    def install(self) -> "PreemptionFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

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
