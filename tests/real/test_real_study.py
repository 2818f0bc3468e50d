"""configs/sweeps/paper_smollm2.py: its two documented commands (SFT on the embedded task v2, then the
sweep) run from the real SmolLM2-135M-Instruct with its own tokenizer and chat template, shrunk to 2 steps."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from smollm2 import REPO

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

# float32 compute: this CPU has no native bf16 matmul (the commands' bfloat16 is for the GPU they are sized for).
SHRINK_SFT = ["--config.model.compute_dtype=float32", "--config.train.steps=2", "--config.train.global_batch=4",
              "--config.train.eval_every=100", "--config.train.checkpoint_every=2", "--config.optim.warmup_steps=1"]
SHRINK_SWEEP = ["--config.seeds=(0,)", "--config.methods.dpo.beta=(0.1,)", "--config.methods.lndpo.beta=(1.0,)",
                "--config.methods.simpo.beta=(2.5,)", "--config.methods.simpo.gamma=(0.5,)",
                "--set", "model.compute_dtype=float32", "--set", "train.steps=2", "--set", "train.global_batch=2",
                "--set", "train.eval_every=100", "--set", "train.checkpoint_every=2", "--set", "optim.warmup_steps=1",
                "--set", "reference.mode=in_step", "--set", "eval.max_prompts=2", "--set", "eval.max_new_tokens=8",
                "--set", "eval.batch_size=2"]


def documented_commands() -> list[list[str]]:
    """The two commands of the config's docstring, as argument lists."""
    with open(os.path.join(REPO, "configs", "sweeps", "paper_smollm2.py"), encoding="utf-8") as f:
        doc = f.read().split('"""')[1]
    blocks = re.findall(r"\n    (python -m .*?)(?:\n\n|\n[^ ])", doc.replace("\\\\\n", " "), flags=re.DOTALL)
    return [shlex.split(" ".join(b.split())) for b in blocks]


def test_the_documented_sft_and_sweep_commands_run_two_steps_on_cpu(tmp_path, smollm2_dir):
    sft, sweep = documented_commands()
    assert sft[:3] == ["python", "-m", "lnpo.main"] and sweep[:3] == ["python", "-m", "lnpo.sweep"]
    env = {**os.environ, "PYTHONPATH": REPO}
    for cmd, extra in ((sft, SHRINK_SFT), (sweep, SHRINK_SWEEP)):
        args = [a.replace("/ckpt/smollm2", smollm2_dir) for a in cmd]
        args = [sys.executable if a == "python" else a for a in args]
        args = [a.replace("--config=configs/", f"--config={REPO}/configs/") for a in args]
        proc = subprocess.run(args + extra, check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=1500)
        assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-4000:])
    with open(tmp_path / "runs" / "paper_smollm2" / "sweep.json") as f:
        record = json.load(f)
    assert sorted(r["method"] for r in record["runs"]) == ["dpo", "lndpo", "simpo"]
    assert all(r["status"] == "finished" for r in record["runs"]), record["runs"]
    for r in record["runs"]:
        with open(tmp_path / "runs" / "paper_smollm2" / r["name"] / "eval" / "summary.json") as f:
            summary = json.load(f)
        assert summary["scorer"] == "embedded-v2" and summary["num_prompts"] == 2, summary
    with open(tmp_path / "runs" / "paper_smollm2" / "sft" / "run.json") as f:
        assert json.load(f)["stage"] == "sft"
