"""Suite-wide settings: a persistent XLA compilation cache shared by tests and their subprocesses.

Many tests compile the same small train steps; caching the executables on disk
keeps the suite fast on 2 cores. The cache lives under the system temp dir.
"""

import os
import tempfile

CACHE_DIR = os.path.join(tempfile.gettempdir(), "lnpo-test-xla-cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE_DIR)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Simulated multi-device CPU runs (XLA_FLAGS=--xla_force_host_platform_device_count=N) rendezvous
# their device threads for every collective; on a loaded 2-core machine the default 40 s
# rendezvous timeout can abort a correct program, so tests that simulate devices pass
# --xla_cpu_collective_timeout_seconds=900 alongside. (XLA:CPU can also leave one device
# thread out of a rendezvous for good; its 40 s terminate timeout then aborts the process,
# and tests/train/test_sharded.py reruns it.)
