"""The run's lifecycle: a stage is done only when its export loads; SIGTERM at any point is exit 75;
writes stay inside the workdir and the runs root (no symlinks followed, no input written, nothing
read-only discovered late)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
from train_helpers import REPO, _env, small_config

from lnpo import rundir
from lnpo.errors import ConfigError
from lnpo.train import outputs
from lnpo.train import run as run_mod


def _embedded_config(tmp_path):
    sys.path.insert(0, REPO)
    from configs.lndpo import get_config

    config = get_config()
    config.runs_root = str(tmp_path / "runs")
    return config


def test_a_preempted_embedded_sft_stage_is_not_marked_done(tmp_path, monkeypatch):
    import lnpo.train.trainer as trainer

    config = _embedded_config(tmp_path)
    monkeypatch.setattr(trainer, "train_stage", lambda *a, **k: {"preempted": True, "step": 3, "last_metrics": {}})
    assert run_mod.ensure_embedded_sft(config) is None
    assert not os.path.exists(rundir.done_marker(rundir.embedded_sft_workdir(config)))


def test_an_embedded_sft_export_that_does_not_load_is_not_marked_done(tmp_path, monkeypatch):
    import lnpo.train.trainer as trainer

    config = _embedded_config(tmp_path)
    sft_dir = rundir.embedded_sft_workdir(config)

    def trains_a_broken_export(*args, **kwargs):
        os.makedirs(os.path.join(sft_dir, "export"), exist_ok=True)
        with open(os.path.join(sft_dir, "export", "config.json"), "w") as f:
            json.dump({"model_type": "llama", "hidden_size": 128, "num_attention_heads": 3}, f)
        return {"preempted": False, "step": 4, "last_metrics": {}}

    monkeypatch.setattr(trainer, "train_stage", trains_a_broken_export)
    with pytest.raises(ConfigError, match="does not load"):
        run_mod.ensure_embedded_sft(config)
    assert not os.path.exists(rundir.done_marker(sft_dir))


def test_a_done_marker_without_a_loadable_export_resumes_the_stage(tmp_path, monkeypatch, capsys):
    import lnpo.train.trainer as trainer

    config = _embedded_config(tmp_path)
    sft_dir = rundir.embedded_sft_workdir(config)
    os.makedirs(sft_dir)
    open(rundir.done_marker(sft_dir), "w").write("ok\n")  # as an older lnpo left it after a SIGTERM
    calls = []
    monkeypatch.setattr(trainer, "train_stage", lambda *a, **k: calls.append(1) or {"preempted": True})
    assert run_mod.ensure_embedded_sft(config) is None
    assert calls == [1] and not os.path.exists(rundir.done_marker(sft_dir))
    assert "does not load" in capsys.readouterr().out


PREEMPT_WHILE_LOADING = """
import os, signal, sys
sys.argv = ["lnpo.main", "--config=configs/lndpo.py", "--workdir=" + WORKDIR] + FLAGS
import lnpo.train.trainer as trainer
original = trainer.prepare_data
def prepare_data(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # before the training loop
    return original(*args, **kwargs)
trainer.prepare_data = prepare_data
from lnpo.main import main
main()
"""


@pytest.mark.slow
def test_sigterm_before_the_training_loop_exits_75_and_a_rerun_trains(tmp_path, tiny_sft_dir, task_files):
    workdir = str(tmp_path / "run")
    flags = [f"--config.model.path={tiny_sft_dir}", f"--config.data.source={task_files['train_prefs']}",
             f"--config.data.eval_source={task_files['eval_prefs']}", "--config.data.max_len=64",
             "--config.data.max_prompt_len=32", "--config.train.steps=2", "--config.train.global_batch=8",
             "--config.eval.enabled=false", f"--config.runs_root={tmp_path / 'runs'}"]
    code = f"WORKDIR={workdir!r}\nFLAGS={flags!r}\n" + PREEMPT_WHILE_LOADING
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert not os.path.exists(os.path.join(workdir, "export"))
    proc = subprocess.run([sys.executable, "-m", "lnpo.main", "--config=configs/lndpo.py", f"--workdir={workdir}",
                           *flags], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.path.isdir(os.path.join(workdir, "export"))


def test_the_runs_root_is_configured_never_the_workdirs_parent(tmp_path):
    config = _embedded_config(tmp_path)
    assert rundir.runs_root(config) == str(tmp_path / "runs")
    assert rundir.embedded_task_dir(config).startswith(str(tmp_path / "runs") + os.sep)
    assert rundir.embedded_sft_workdir(config).startswith(str(tmp_path / "runs") + os.sep)
    assert rundir.reference_cache_dir(config).startswith(str(tmp_path / "runs") + os.sep)
    config.runs_root = ""
    assert rundir.runs_root(config) == os.path.abspath("runs")  # the README's command: runs/ in the cwd
    assert rundir.default_workdir(config) == os.path.join("runs", config.name)


@pytest.mark.parametrize("name", ["metrics.jsonl", "export", "checkpoints"])
def test_a_symlinked_output_in_the_workdir_is_refused_in_one_line(tmp_path, tiny_sft_dir, task_files, name):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep me")
    workdir = tmp_path / "run"
    workdir.mkdir()
    os.symlink(elsewhere / "precious.txt" if name == "metrics.jsonl" else elsewhere, workdir / name)
    with pytest.raises(ConfigError) as info:
        run_mod.check_outputs(small_config(tiny_sft_dir, task_files), str(workdir))
    assert "\n" not in str(info.value) and "symbolic link" in str(info.value) and name in str(info.value)
    assert (elsewhere / "precious.txt").read_text() == "keep me"


def test_a_workdir_inside_the_model_directory_is_refused(tiny_sft_dir, task_files):
    with pytest.raises(ConfigError, match="config.model.path"):
        run_mod.check_outputs(small_config(tiny_sft_dir, task_files), os.path.join(tiny_sft_dir, "run"))


def test_a_read_only_workdir_is_one_line_naming_it_before_any_work(tmp_path, tiny_sft_dir, task_files, monkeypatch):
    workdir = str(tmp_path / "run")
    original = outputs.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # noqa: A002 (tempfile's own keyword)
        if os.path.abspath(dir) == os.path.abspath(workdir):
            raise OSError(errno.EROFS, "Read-only file system")
        return original(*args, dir=dir, **kwargs)

    monkeypatch.setattr(outputs.tempfile, "mkstemp", read_only)
    import lnpo.train.trainer as trainer

    monkeypatch.setattr(trainer, "train_stage", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ConfigError) as info:
        run_mod.run(small_config(tiny_sft_dir, task_files), workdir)
    assert str(info.value) == f"workdir {workdir}: not writable (read-only file system)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_cache_directory_is_one_line_naming_it(tmp_path, tiny_sft_dir, task_files):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    config = small_config(tiny_sft_dir, task_files, **{"reference.cache_dir": str(cache)})
    with pytest.raises(ConfigError, match="config.reference.cache_dir .*not writable"):
        run_mod.check_outputs(config, str(tmp_path / "run"))
