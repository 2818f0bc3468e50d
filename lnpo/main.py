"""Train with lnpo: ``python -m lnpo.main --config=configs/lndpo.py [--workdir=DIR]``.

Any config field can be overridden on the command line, e.g.
``--config.loss.beta=0.05 --config.model.path=/ckpt/hf-dir``. With no flag
but ``--config`` the run uses the embedded task and a tiny model: an SFT model
is trained first (cached under ``runs/``), then the configured objective.
"""

from __future__ import annotations

import os
import sys


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


# Exit status of a run stopped by SIGTERM after saving a checkpoint: rerun the same command
# to resume (launch/tpu/train.sh does so). 75 is EX_TEMPFAIL.
EXIT_PREEMPTED = 75


def main(argv=None):
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "ml_collections config file", lock_config=True)
    flags.DEFINE_string("workdir", None, "output directory (default: runs/<config name>)")
    flags.mark_flags_as_required(["config"])

    def _run(_):
        from absl import logging

        logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
        from lnpo.train.loop import NonFiniteLoss
        from lnpo.train.run import run

        config = flags.FLAGS.config
        workdir = flags.FLAGS.workdir or os.path.join("runs", config.name)
        try:
            summary = run(config, workdir)
        except (FileNotFoundError, NonFiniteLoss, ValueError, KeyError) as e:
            # Bad configs (ConfigError is a ValueError), data rows, checkpoints: one line naming
            # the field, row or file.
            if os.environ.get("LNPO_DEBUG"):
                raise
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"lnpo: error: {message}", file=sys.stderr)
            print("lnpo: (set LNPO_DEBUG=1 for the traceback)", file=sys.stderr)
            sys.exit(2)
        if summary["preempted"]:
            sys.exit(EXIT_PREEMPTED)

    argv = sys.argv if argv is None else argv
    _config_root_on_path(argv)
    app.run(_run, argv=argv)


if __name__ == "__main__":
    main()
