"""Preemption: SIGTERM saves at the next step boundary and a rerun resumes exactly."""

from __future__ import annotations

import os

import pytest
from train_helpers import losses_of, result_of, run_python, small_config

from lnpo.train.run import run

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


@pytest.mark.slow
def test_sigterm_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_sft_dir, task_files):
    overrides = {"train.steps": 6, "train.checkpoint_every": 4, "reference.cache_dir": str(tmp_path / "cache")}
    workdir = str(tmp_path / "preempted")
    head = f"MODEL={tiny_sft_dir!r}\nTASK={task_files!r}\nOVERRIDES={overrides!r}\nWORKDIR={workdir!r}\n"
    first = result_of(run_python(head + "KILL_AT=2\n" + PREEMPTED))
    assert first == {"steps": 2, "preempted": True}  # stopped at the step boundary after the signal
    assert not os.path.exists(os.path.join(workdir, "export"))
    second = result_of(run_python(head + "KILL_AT=-1\n" + PREEMPTED))
    assert second == {"steps": 6, "preempted": False}

    straight = str(tmp_path / "straight")
    run(small_config(tiny_sft_dir, task_files, **overrides), straight)
    resumed, expected = losses_of(workdir), losses_of(straight)
    assert sorted(resumed) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    assert resumed == expected  # exactly, step for step
