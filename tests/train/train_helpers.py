"""Helpers shared by the trainer tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small_config(model_path: str, task_files: dict, **overrides):
    """The lndpo config shrunk for tests: tiny data, a few steps, every step logged."""
    sys.path.insert(0, REPO)
    from configs.lndpo import get_config

    c = get_config()
    c.model.path = model_path
    c.data.source = task_files["train_prefs"]
    c.data.eval_source = task_files["eval_prefs"]
    c.data.max_prompt_len = 32
    c.data.max_len = 64
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
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        target = c
        for part in section.split(".") if section else []:
            target = target[part]
        target[field] = value
    return c


def losses_of(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def run_python(code: str, *, env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(env_extra or {})
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
