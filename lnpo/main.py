"""Train with lnpo: ``python -m lnpo.main --config=configs/lndpo.py [--workdir=DIR]``.

Any config field can be overridden on the command line, e.g.
``--config.loss.beta=0.05 --config.model.path=/ckpt/hf-dir``. With no flag
but ``--config`` the run uses the embedded task and a tiny model: an SFT model
is trained first (cached under ``runs/``), then the configured objective.
"""

from __future__ import annotations

import sys

from lnpo.cli import EXIT_BAD_INPUT, EXIT_LOST_PEER, EXIT_PREEMPTED, report_user_errors  # noqa: F401 (re-exported)


def _unknown_field_message(error: Exception, argv: list[str]) -> str:
    """One line for ml_collections' "no such field" error while parsing ``--config.<path>`` overrides.

    Its message is ``'<key>'`` and, when a field is close, ``Did you mean "<field>" instead of "<key>"?``.
    """
    while isinstance(error, BaseException) and error.args:  # AttributeError(KeyError(message))
        error = error.args[0]
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    key = lines[0].strip("'\"") if lines else "?"
    paths = [arg[len("--config."):].split("=", 1)[0] for arg in argv if arg.startswith("--config.")]
    field = next((p for p in paths if key in p.split(".")), key)
    hint = " ".join(lines[1:])
    return f"config.{field}: no such config field" + (f"; {hint[0].lower()}{hint[1:]}" if hint else "")


def _parse_flags(argv: list[str]):
    """absl's flag parser; a misspelt ``--config.<field>`` override is one line (exit 2), not a traceback."""
    from absl import app

    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
        print(f"lnpo: error: {_unknown_field_message(e, argv)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def main(argv=None):
    from absl import app, flags

    from lnpo.config_files import define_config_flag

    argv = sys.argv if argv is None else argv
    define_config_flag(argv)
    flags.DEFINE_string("workdir", None, "output directory (default: <config.runs_root>/<config name>)")
    flags.mark_flags_as_required(["config"])

    def _run(_):
        from absl import logging

        logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
        from lnpo.rundir import default_workdir
        from lnpo.train.run import run

        config = flags.FLAGS.config
        workdir = flags.FLAGS.workdir or default_workdir(config)
        summary = report_user_errors("lnpo", run, config, workdir)
        if summary["preempted"]:
            sys.exit(EXIT_PREEMPTED)

    app.run(_run, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
