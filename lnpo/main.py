"""Train with lnpo: ``python -m lnpo.main --config=configs/lndpo.py [--workdir=DIR]``.

Any config field can be overridden on the command line, e.g.
``--config.loss.beta=0.05 --config.model.path=/ckpt/hf-dir``. With no flag
but ``--config`` the run uses the embedded task and a tiny model: an SFT model
is trained first (cached under ``runs/``), then the configured objective.
"""

from __future__ import annotations

import os
import sys

from lnpo.cli import EXIT_BAD_INPUT, EXIT_LOST_PEER, EXIT_PREEMPTED, report_user_errors  # noqa: F401 (re-exported)


def _config_root_on_path(argv: list[str]) -> None:
    """Config files import ``configs.base``: put the directory holding ``configs/`` on sys.path."""
    for i, arg in enumerate(argv):
        path = None
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        if path:
            path = path.split(":", 1)[0]
            root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
            if root not in sys.path:
                sys.path.insert(0, root)


def main(argv=None):
    from absl import app, flags
    from ml_collections import config_flags

    argv = sys.argv if argv is None else argv
    config_flags.DEFINE_config_file("config", None, "ml_collections config file", lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "output directory (default: <config.runs_root>/<config name>)")
    flags.mark_flags_as_required(["config"])

    def _run(_):
        from absl import logging

        logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
        from lnpo.train.run import default_workdir, run

        config = flags.FLAGS.config
        workdir = flags.FLAGS.workdir or default_workdir(config)
        summary = report_user_errors("lnpo", run, config, workdir)
        if summary["preempted"]:
            sys.exit(EXIT_PREEMPTED)

    _config_root_on_path(argv)
    app.run(_run, argv=argv)


if __name__ == "__main__":
    main()
