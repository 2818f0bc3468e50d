"""Hyperparameter sweeps: ``python -m lnpo.sweep --config=configs/sweeps/<name>.py --workdir=DIR``.

A sweep config (an ml_collections file under ``configs/sweeps/``) names methods
and their grids. Every grid point becomes one run: the method's config file
(``configs/dpo.py``, ``configs/lndpo.py``, ``configs/simpo.py``, ...), then the
sweep's shared overrides, the method's overrides and the grid point, trained
and evaluated by :func:`lnpo.train.run.run` in ``DIR/<run name>``. Every run
directory is a child of ``DIR``, so all runs share one runs root: the embedded
SFT model (``DIR/sft-embedded-*``) is trained once and the reference log-prob
cache (``DIR/reference_cache``) is computed once per distinct reference and
data, whatever the number of runs.

Sweep config fields (see ``configs/sweeps/smoke.py`` for a small one)::

    name       str: default workdir runs/<name>
    methods    one entry per method; the key is the run-name prefix:
      <key>.config     the method's config: "dpo" (configs/dpo.py) or a path to a .py file
      <key>.beta       tuple of loss.beta values   \\
      <key>.gamma      tuple of loss.gamma values   | optional grid axes; an absent axis
      <key>.lr         tuple of optim.lr values    /  keeps the method config's value
      <key>.overrides  (optional) nested run-config overrides for this method only
      <key>.enabled    (optional) False leaves the method out
    seeds      tuple of seeds (config.seed)
    overrides  nested run-config overrides for every run, e.g. overrides.train.steps = 200
    evaluate   bool: evaluate every run (config.eval.enabled)
    report     bool: build DIR/report.md + report.html at the end (lnpo.report.build_report)

The run name is ``<key>-beta<b>[-gamma<g>]-lr<lr>-seed<s>`` (values with ``%g``),
e.g. ``dpo-beta0.1-lr1e-05-seed0``. A sweep file defines ``get_config(arg=None)``
(``--config=configs/sweeps/paper.py:/ckpt/sft`` passes ``"/ckpt/sft"`` as ``arg``)
and optionally ``finalize(sweep)``, called after the command-line overrides, to
derive fields (``paper.py`` picks the data files from ``direction`` there).

``python -m lnpo.sweep`` keeps JAX's persistent compilation cache in
``DIR/xla_cache`` (unless ``JAX_COMPILATION_CACHE_DIR`` names another): the learning
rate and the loss hyperparameters are inputs of the compiled steps, so grid points
of one method share their compiled programs: the first run compiles them (those
over JAX's 1 s minimum compile time are cached), later runs load them.

Runs, one after another on this host. A run is *finished* when
``eval/summary.json`` exists, or when its ``run.json`` says ``"status":
"trained"`` and evaluation is off; finished runs are skipped, so rerunning the
same command continues an interrupted sweep (a run stopped mid-training resumes
from its last checkpoint; a trained but unevaluated run is only evaluated). A
run that raises is recorded in its ``run.json`` (``"status": "failed"``,
``"error"``: one line; the traceback in ``error.log``) and the sweep goes on;
failed runs are retried by the next invocation. ``DIR/sweep.json`` lists every
run's status. At the end the report is built from every run under ``DIR``. Exit
status: 0, 1 when a run failed, 2 for an invalid sweep config, 75 when preempted
(SIGTERM: the current run checkpoints, the sweep stops; rerun the same command).

``--print_commands`` prints one ``python -m lnpo.main --config=configs/<method>.py
--workdir=DIR/<run> --config.loss.beta=... ...`` line per run instead (for pods:
run one to completion first so the SFT model and reference cache exist, or launch
them all on a shared ``DIR``), then ``python -m lnpo.report DIR`` builds the report.

Python API: :func:`load_sweep`, :func:`expand`, :func:`run_sweep`,
:func:`run_status`, :func:`print_commands`, :class:`RunSpec`. One module per job:

- :mod:`lnpo.sweep.load`: the sweep file (``get_config``, command-line overrides, ``finalize``);
- :mod:`lnpo.sweep.overrides`: dotted run-config overrides (flatten, apply);
- :mod:`lnpo.sweep.grid`: grid expansion (methods x axes x seeds -> :class:`RunSpec` list);
- :mod:`lnpo.sweep.spec`: :class:`RunSpec`, one run (its config, its ``lnpo.main`` command);
- :mod:`lnpo.sweep.records`: run status, ``sweep_run.json``, failure records;
- :mod:`lnpo.sweep.execute`: running the runs one after another;
- :mod:`lnpo.sweep.commands`: ``--print_commands``;
- :mod:`lnpo.sweep.cli`: ``python -m lnpo.sweep``.
"""

from lnpo.errors import SweepError
from lnpo.sweep.cli import main, share_compiled_programs
from lnpo.sweep.commands import missing_fields, print_commands
from lnpo.sweep.execute import execute_run, run_sweep
from lnpo.sweep.grid import GRID_AXES, expand
from lnpo.sweep.load import finalize_sweep, load_sweep, set_run_overrides
from lnpo.sweep.overrides import apply_overrides, flatten
from lnpo.sweep.records import record_failure, run_status
from lnpo.sweep.spec import RunSpec

__all__ = [
    "GRID_AXES",
    "RunSpec",
    "SweepError",
    "apply_overrides",
    "execute_run",
    "expand",
    "finalize_sweep",
    "flatten",
    "load_sweep",
    "main",
    "missing_fields",
    "print_commands",
    "record_failure",
    "run_status",
    "run_sweep",
    "set_run_overrides",
    "share_compiled_programs",
]
