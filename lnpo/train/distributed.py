"""Several processes (TPU pod hosts, SLURM tasks, localhost workers): start-up with bounded timeouts, and
what a process does when another one dies.

``initialize(config)`` calls ``jax.distributed.initialize`` when this process is
one of several: on a TPU pod slice (``TPU_WORKER_HOSTNAMES`` lists several
hosts), under SLURM with more than one task, or when ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are set. Its timeouts come from
``config.distributed``:

- ``initialization_timeout_s``: how long start-up waits for every process to connect
  (past it JAX's runtime aborts the process; the line printed before says what it
  waited for);
- ``heartbeat_timeout_s``: a process that has sent no heartbeat for this long is
  declared dead, and the coordination service stops every other process.

A dead peer shows up sooner in the next collective: its sockets close and the
collective fails at once (``Connection closed by peer``). :func:`lost_peer`
recognizes those errors; ``lnpo.main`` then reports one line and leaves with
``os._exit``, because the orderly exit would first wait at JAX's shutdown
barrier for processes that will never arrive.
"""

from __future__ import annotations

import os
import sys

import jax

from lnpo.errors import UserError

# Messages of errors raised when another process of the job is gone: a collective whose peer
# closed its connection (gloo on CPU, NCCL on GPU) or the coordination service's verdict.
_LOST_PEER_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Gloo", "NCCL", "heartbeat",
                      "coordination service")


class StartupError(UserError, ValueError):
    """The processes of a multi-process job could not connect (reported in one line by ``lnpo.main``)."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type's name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def launched_as_one_of_several(env=None) -> bool:
    """Whether the environment says this process is one of several of one job."""
    env = os.environ if env is None else env
    if "JAX_COORDINATOR_ADDRESS" in env:
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize(config) -> None:
    """``jax.distributed.initialize`` with ``config.distributed``'s timeouts when launched as one of
    several processes; a no-op for one process or when already initialized."""
    from lnpo.config import ConfigError, check_positive

    d = config.distributed
    for field in ("initialization_timeout_s", "heartbeat_timeout_s"):
        check_positive(f"distributed.{field}", d[field], integer=True)
    if jax.distributed.is_initialized() or not launched_as_one_of_several():
        return
    kwargs = {"initialization_timeout": int(d.initialization_timeout_s),
              "heartbeat_timeout_seconds": int(d.heartbeat_timeout_s)}
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env:
        for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
            if name not in env:
                raise ConfigError(f"environment: JAX_COORDINATOR_ADDRESS is set but {name} is not")
        kwargs.update(coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=int(env["JAX_NUM_PROCESSES"]),
                      process_id=int(env["JAX_PROCESS_ID"]))
    # Otherwise (SLURM, a TPU pod slice) JAX reads the cluster from the environment. If the
    # coordinator cannot be reached in time, JAX's runtime aborts the process itself: this line
    # says what it was waiting for.
    where = kwargs.get("coordinator_address", "the coordinator from the environment")
    print(f"lnpo: joining the multi-process job at {where} (waiting up to {d.initialization_timeout_s} s)",
          file=sys.stderr, flush=True)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        raise StartupError(f"distributed start-up: the job's processes did not all connect within "
                           f"config.distributed.initialization_timeout_s={d.initialization_timeout_s} s "
                           f"({first_line(e)})") from e


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` says another process of a multi-process job is gone."""
    # Only a started multi-process runtime has peers (and asking it does not start a backend).
    if not jax.distributed.is_initialized() or not isinstance(error, (RuntimeError, ValueError)):
        return False
    text = str(error)
    return any(marker in text for marker in _LOST_PEER_MARKERS)
