"""Preemption: SIGTERM saves at the next step boundary and a rerun resumes exactly; two-process runs."""

from __future__ import annotations

import json
import os
import socket

import pytest

from lnpo.train.run import run
from train_helpers import losses_of, run_python, small_config

# Runs the config in a fresh process; the logger sends this process SIGTERM right
# after logging step KILL_AT (through the real signal handler).
PREEMPTED = """
import os, signal, sys, json
sys.path.insert(0, "tests/train")
from train_helpers import small_config
from lnpo.train import logger as logger_mod
from lnpo.train.run import run
original = logger_mod.RunLogger.log
def log(self, step, metrics):
    original(self, step, metrics)
    if step == KILL_AT:
        os.kill(os.getpid(), signal.SIGTERM)
logger_mod.RunLogger.log = log
summary = run(small_config(MODEL, TASK, **OVERRIDES), WORKDIR)
print("RESULT" + json.dumps({"steps": summary["steps"], "preempted": summary["preempted"]}))
"""


def _result(proc):
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])


@pytest.mark.slow
def test_sigterm_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_sft_dir, task_files):
    overrides = {"train.steps": 6, "train.checkpoint_every": 4, "reference.cache_dir": str(tmp_path / "cache")}
    workdir = str(tmp_path / "preempted")
    head = f"MODEL={tiny_sft_dir!r}\nTASK={task_files!r}\nOVERRIDES={overrides!r}\nWORKDIR={workdir!r}\n"
    first = _result(run_python(head + "KILL_AT=2\n" + PREEMPTED))
    assert first == {"steps": 2, "preempted": True}  # stopped at the step boundary after the signal
    assert not os.path.exists(os.path.join(workdir, "export"))
    second = _result(run_python(head + "KILL_AT=-1\n" + PREEMPTED))
    assert second == {"steps": 6, "preempted": False}

    straight = str(tmp_path / "straight")
    run(small_config(tiny_sft_dir, task_files, **overrides), straight)
    resumed, expected = losses_of(workdir), losses_of(straight)
    assert sorted(resumed) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    assert resumed == expected  # exactly, step for step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TWO_PROCESS = """
import json, sys
sys.path.insert(0, "tests/train")
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{PORT}", num_processes=2, process_id=PID, initialization_timeout=120)
from train_helpers import small_config
from lnpo.train.run import run
summary = run(small_config(MODEL, TASK, **OVERRIDES), WORKDIR)
print("RESULT" + json.dumps({"steps": summary["steps"], "devices": jax.device_count()}))
"""


def _two_processes(code_head: str):
    import subprocess
    import sys

    from train_helpers import REPO

    procs = []
    port = _free_port()
    for pid in range(2):
        env = dict(os.environ, PYTHONPATH=REPO)
        code = code_head + f"PORT={port}\nPID={pid}\n" + TWO_PROCESS
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-4000:]
        outs.append(json.loads(out.split("RESULT", 1)[1]))
    return outs


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_like_one(tmp_path, tiny_sft_dir, task_files):
    workdir = str(tmp_path / "two")
    # A constant schedule: the first launch asks for 2 steps, the second for 4.
    base = {"reference.mode": "in_step", "train.checkpoint_every": 2, "optim.schedule": "constant"}
    head = f"MODEL={tiny_sft_dir!r}\nTASK={task_files!r}\nWORKDIR={workdir!r}\n"
    outs = _two_processes(head + f"OVERRIDES={dict(base, **{'train.steps': 2})!r}\n")
    assert [o["steps"] for o in outs] == [2, 2] and outs[0]["devices"] == 2
    outs = _two_processes(head + f"OVERRIDES={dict(base, **{'train.steps': 4})!r}\n")  # resumes at step 2
    assert [o["steps"] for o in outs] == [4, 4]

    single = str(tmp_path / "one")
    run(small_config(tiny_sft_dir, task_files, **dict(base, **{"train.steps": 4})), single)
    two, one = losses_of(workdir), losses_of(single)
    assert sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=2e-5, abs=2e-6)
