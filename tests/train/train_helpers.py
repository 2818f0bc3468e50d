"""Helpers shared by the trainer tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small_config(model_path: str, task_files: dict, **overrides):
    """The lndpo config shrunk for tests: tiny data, a few steps, every step logged."""
    sys.path.insert(0, REPO)
    from configs.lndpo import get_config
    from lnpo.sweep.overrides import apply_overrides

    c = get_config()
    # What runs share (reference cache, weights hashes) next to the test's model, never the repo's runs/.
    c.runs_root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(model_path))), "runs")
    c.model.path = model_path
    c.data.source = task_files["train_prefs"]
    c.data.eval_source = task_files["eval_prefs"]
    c.data.max_prompt_len = 32
    c.data.max_len = 64
    c.data.layout = "padded"
    c.loss.beta = 1.0
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 0
    c.train.steps = 4
    c.train.global_batch = 8
    c.train.log_every = 1
    c.train.eval_every = 1000
    c.train.eval_batches = 1
    c.train.checkpoint_every = 2
    c.eval.enabled = False
    apply_overrides(c, overrides)
    return c


def losses_of(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _env(*extra: dict | None) -> dict:
    """This process's environment plus ``extra`` (in order), with the repository on PYTHONPATH."""
    env = dict(os.environ)
    for e in extra:
        env.update(e or {})
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_python(code: str, *, env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(env_extra), capture_output=True,
                          text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(codes: list[str], *, env_extra: dict | None = None,
                    env_per_process: list[dict] | None = None) -> list[subprocess.Popen]:
    """Start one ``python -c`` per code in the repository root (its stdout/stderr piped)."""
    per_process = env_per_process or [{}] * len(codes)
    return [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=_env(env_extra, per_process[i]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, code in enumerate(codes)]


def finish(procs: list[subprocess.Popen], timeout: float = 900) -> list[tuple[int, str, str]]:
    """Wait for every process; ``(returncode, stdout, stderr)`` each. Kills all on a timeout."""
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
        return [(p.returncode, *out) for p, out in zip(procs, outs)]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise


def result(returncode: int, stdout: str, stderr: str):
    """The JSON after ``RESULT`` on a finished process's stdout; fails with its stderr when it did not exit 0."""
    assert returncode == 0, stderr[-4000:]
    return json.loads(stdout.split("RESULT", 1)[1])


def result_of(proc: subprocess.CompletedProcess):
    """:func:`result` of a :func:`run_python` process."""
    return result(proc.returncode, proc.stdout, proc.stderr)


def results(outs: list[tuple[int, str, str]]) -> list:
    """:func:`result` of each process of :func:`finish`."""
    return [result(*out) for out in outs]


# A prelude for scripts run as process PID of NPROCS: JAX's multi-process runtime on localhost.
DISTRIBUTED_PRELUDE = """
import json, sys
sys.path.insert(0, "tests/train")
import jax
jax.distributed.initialize(f"127.0.0.1:{PORT}", num_processes=NPROCS, process_id=PID, initialization_timeout=120)
"""


def run_processes(body: str, nprocs: int, *, head: str = "", env_extra: dict | None = None) -> list[dict]:
    """Run ``head + DISTRIBUTED_PRELUDE + body`` as ``nprocs`` processes of one job; their RESULT dicts."""
    port = free_port()
    codes = [head + f"PORT={port}\nNPROCS={nprocs}\nPID={pid}\n" + DISTRIBUTED_PRELUDE + body
             for pid in range(nprocs)]
    return results(finish(start_processes(codes, env_extra=env_extra)))
