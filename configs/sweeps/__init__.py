"""Sweep configs for ``python -m lnpo.sweep --config=configs/sweeps/<name>.py --workdir=DIR``.

Each file defines ``get_config(arg=None)`` returning a sweep ConfigDict (fields
documented in :mod:`lnpo.sweep`) and may define ``finalize(sweep)``, which
lnpo.sweep calls after the command-line overrides to derive fields. The helpers
below build the common parts; they import nothing but ml_collections.

- ``smoke.py``: 2 methods x 2 betas on the embedded task, a few steps (tests, demos).
- ``paper_embedded.py``: the study's design (DPO, LN-DPO, SimPO grids) on the embedded
  task, about 30 minutes on 2 CPU cores.
- ``paper.py``: the study's real setting (HH-RLHF <-> PKU-SafeRLHF, OpenAssistant
  DeBERTa reward model); ``--config=configs/sweeps/paper.py:/path/to/sft``.
"""

from __future__ import annotations

import ml_collections


def method(config: str, *, beta=None, gamma=None, lr=None, overrides=None) -> ml_collections.ConfigDict:
    """One sweep method: its config file (``"dpo"`` = configs/dpo.py) and grids (tuples; None = the
    config file's value, not swept); ``overrides``: nested run-config overrides for this method."""
    m = ml_collections.ConfigDict()
    m.config = config
    if beta is not None:
        m.beta = tuple(float(b) for b in beta)
    if gamma is not None:
        m.gamma = tuple(float(g) for g in gamma)
    if lr is not None:
        m.lr = tuple(float(x) for x in lr)
    m.overrides = ml_collections.ConfigDict(overrides or {})
    m.enabled = True
    return m


def new_sweep(name: str, *, seeds=(0,), evaluate: bool = True, report: bool = True,
              overrides=None) -> ml_collections.ConfigDict:
    """An empty sweep: add methods with ``sweep.methods.<key> = method(...)``."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.methods = ml_collections.ConfigDict()
    c.seeds = tuple(int(s) for s in seeds)
    c.overrides = ml_collections.ConfigDict(overrides or {})
    c.evaluate = evaluate
    c.report = report
    return c
