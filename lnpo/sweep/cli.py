"""``python -m lnpo.sweep``: flags, the shared compilation cache, exit statuses (see :mod:`lnpo.sweep`)."""

from __future__ import annotations

import ast
import os
import sys

from lnpo import config_files
from lnpo.errors import SweepError
from lnpo.sweep.commands import print_commands
from lnpo.sweep.execute import run_sweep
from lnpo.sweep.grid import expand
from lnpo.sweep.load import finalize_sweep, set_run_overrides
from lnpo.sweep.records import run_status


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def share_compiled_programs(workdir: str) -> str:
    """Use JAX's persistent compilation cache in ``workdir/xla_cache`` unless one is configured already
    (``JAX_COMPILATION_CACHE_DIR`` or ``jax_compilation_cache_dir``); returns the directory in use.

    Grid points differ in the learning rate and the objective's hyperparameters, which
    the train and evaluation steps take as inputs, so runs of one method and shape lower
    to the same programs: the first run compiles them, every later run (and a rerun
    after preemption) loads them. Called by the command line, once per process.
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    path = os.path.join(os.path.abspath(workdir), "xla_cache")
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def main(argv=None):
    from absl import app, flags
    from ml_collections import config_flags

    argv = sys.argv if argv is None else argv
    config_files.define_config_flag(argv, "sweep config file (configs/sweeps/<name>.py[:arg])")
    flags.DEFINE_string("workdir", None, "the sweep directory (default: runs/<sweep name>); run i goes to DIR/<run>")
    flags.DEFINE_bool("print_commands", False, "print one `python -m lnpo.main` command per run instead of running")
    flags.DEFINE_bool("dry_run", False, "list the runs and their status; run nothing")
    flags.DEFINE_list("only", None, "run only these runs: comma-separated fnmatch patterns of run names or methods")
    flags.DEFINE_multi_string("set", [], "KEY=VALUE: a run-config override for every run, e.g. --set train.steps=10")
    flags.DEFINE_string("python", "python", "interpreter in the printed commands")
    flags.mark_flags_as_required(["config"])

    def _main(_):
        from absl import logging

        logging.set_verbosity(logging.WARNING)
        f = flags.FLAGS
        spec = config_flags.get_config_filename(f["config"])
        path = config_files.split_spec(spec)[0]
        sweep = finalize_sweep(f.config, spec)
        extra = {}
        for item in f.set:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SweepError(f"--set {item!r}: expected KEY=VALUE")
            extra[key.strip()] = _parse_value(value)
        set_run_overrides(sweep, extra)
        workdir = f.workdir or os.path.join("runs", sweep.get("name", "sweep"))
        root = config_files.configs_root(path)
        if f.print_commands:
            print_commands(sweep, workdir, config_root=root, only=f.only, python=f.python)
            return 0
        if f.dry_run:
            for s in expand(sweep, workdir, config_root=root, only=f.only):
                print(f"{s.name}\t{run_status(s.workdir, evaluate=s.evaluate)}")
            return 0
        cache = share_compiled_programs(workdir)
        print(f"lnpo.sweep: compiled programs are shared through {cache}")
        result = run_sweep(sweep, workdir, config_root=root, only=f.only)
        if result["preempted"]:
            from lnpo.cli import EXIT_PREEMPTED

            sys.exit(EXIT_PREEMPTED)  # as lnpo.main: rerun the same command to resume
        sys.exit(1 if result["failed"] else 0)

    from lnpo.cli import report_user_errors

    app.run(lambda args: report_user_errors("lnpo.sweep", _main, args), argv=argv)
