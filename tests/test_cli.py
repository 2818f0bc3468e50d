"""The entry points' error rule: a UserError is one line (exit 2, LostPeer 3), anything else keeps its traceback."""

from __future__ import annotations

import pytest

from lnpo import cli
from lnpo.errors import CheckpointError, ConfigError, LostPeer, UserError


def _raise(error):
    def fn(*args, **kwargs):
        raise error

    return fn


@pytest.mark.parametrize("error, code", [(ConfigError("config.loss.beta: must be > 0"), 2),
                                         (CheckpointError("no checkpoint in /x restores"), 2),
                                         (LostPeer("process 1 is gone"), 3)])
def test_a_user_error_is_one_line_and_its_exit_status(capsys, error, code):
    with pytest.raises(SystemExit) as info:
        cli.report_user_errors("lnpo", _raise(error))
    assert info.value.code == code
    assert capsys.readouterr().err == f"lnpo: error: {error}\n"


@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("params"), FileNotFoundError("/internal"),
                                 RuntimeError("XLA")])
def test_any_other_error_keeps_its_traceback(bug):
    with pytest.raises(type(bug)):
        cli.report_user_errors("lnpo", _raise(bug))


def test_a_multi_line_user_error_is_printed_on_one_line(capsys):
    with pytest.raises(SystemExit):
        cli.report_user_errors("lnpo", _raise(UserError("first\n  second")))
    assert capsys.readouterr().err == "lnpo: error: first second\n"


def test_non_finite_loss_and_startup_errors_are_user_errors():
    from lnpo.train.distributed import StartupError
    from lnpo.train.loop import NonFiniteLoss

    assert issubclass(NonFiniteLoss, UserError) and issubclass(StartupError, UserError)


def test_lnpo_evaluate_prints_user_errors_in_one_line_and_keeps_bugs_tracebacks(monkeypatch, capsys, tmp_path):
    from lnpo.evaluate import __main__ as evaluate_main
    from lnpo.evaluate import evaluate

    assert evaluate_main.main(["--workdir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lnpo.evaluate: error:") and "run.json" in err[0]

    monkeypatch.setattr(evaluate, "evaluate_workdir", _raise(ValueError("an internal bug")))
    with pytest.raises(ValueError, match="an internal bug"):
        evaluate_main.main(["--workdir", str(tmp_path)])


def test_lnpo_report_prints_user_errors_in_one_line_and_keeps_bugs_tracebacks(monkeypatch, capsys, tmp_path):
    from lnpo import report

    assert report.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"lnpo.report: error: {tmp_path / 'missing'}: no such directory"

    monkeypatch.setattr(report, "build_report", _raise(KeyError("an internal bug")))
    with pytest.raises(KeyError):
        report.main([str(tmp_path)])


MAIN_RAISING = """
import sys
import lnpo.train.run as run_module
from lnpo.errors import ConfigError

def run(config, workdir):
    raise {error}

run_module.run = run
from lnpo.main import main
main(["lnpo.main", "--config=configs/dpo.py", "--workdir=" + sys.argv[1]])
"""


@pytest.mark.parametrize("error, code, user", [("ConfigError('config.loss.beta: must be > 0')", 2, True),
                                               ("KeyError('params')", 1, False),
                                               ("ValueError('an internal bug')", 1, False)])
def test_lnpo_main_prints_only_user_errors_in_one_line(tmp_path, error, code, user):
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", MAIN_RAISING.format(error=error), str(tmp_path / "w")], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == code, proc.stderr
    if user:
        assert proc.stderr.strip().splitlines()[-1] == "lnpo: error: config.loss.beta: must be > 0"
        assert "Traceback" not in proc.stderr
    else:
        assert "Traceback" in proc.stderr and error.split("(")[0] in proc.stderr
