"""Suite-wide settings: a persistent XLA compilation cache shared by tests and their subprocesses.

Many tests compile the same small train steps; caching the executables on disk
keeps the suite fast on 2 cores. The cache lives under the system temp dir.
"""

import os
import tempfile

import pytest

CACHE_DIR = os.path.join(tempfile.gettempdir(), "lnpo-test-xla-cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE_DIR)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def simulated_devices_env(count: int) -> dict[str, str]:
    """The environment for a subprocess that simulates `count` CPU devices.

    XLA:CPU runs device threads' collective thunks on its Eigen pool, sized max(NPROC or the core
    count, device count): one thread per simulated device here. CI once aborted a correct
    8-device run three times in a row ("Expected 8 threads to join the rendezvous, but only 7 of
    them arrived"), which fits a pool with no thread left for the last device; NPROC gives it
    room to spare. The collective timeout is raised because a loaded 2-core machine can be slow
    to reach a rendezvous.
    """
    return {
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={count} --xla_cpu_collective_timeout_seconds=900",
        "NPROC": str(max(32, 4 * count)),
        "JAX_PLATFORMS": "cpu",
    }


@pytest.fixture
def simulated_devices():
    """`simulated_devices(n)`: environment variables for a subprocess with n simulated CPU devices."""
    return simulated_devices_env
