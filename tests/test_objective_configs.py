"""The config files of the objectives beyond summed log-probs, and a sweep that names them one line each."""

from __future__ import annotations

import os
import sys

import pytest

from lnpo import losses
from lnpo.config import loss_hparams, validate
from lnpo.sweep import expand, load_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NEW = {"ld_dpo": "ld_dpo", "sampo": "sampo", "wpo": "dpo_wpo", "alphapo": "alphapo", "kto": "kto"}


@pytest.mark.parametrize("config_name", sorted(NEW))
def test_config_file_selects_its_objective_and_validates(config_name):
    import importlib

    config = importlib.import_module(f"configs.{config_name}").get_config()
    assert config.loss.name == NEW[config_name]
    validate(config, num_devices=1)
    losses.validate(config.loss.name, loss_hparams(config))
    if "sampled" in losses.needs(config.loss.name):
        assert config.reference.mode == "in_step"


def test_length_family_sweep_expands_to_every_method(tmp_path):
    sweep = load_sweep(os.path.join(REPO, "configs", "sweeps", "length_family.py"))
    specs = expand(sweep, str(tmp_path), config_root=REPO)
    by_method = {}
    for spec in specs:
        config = spec.config()
        validate(config, num_devices=1)
        by_method.setdefault(spec.method, set()).add((config.loss.name, config.loss.beta))
    assert by_method["kto"] == {("kto", 0.1), ("kto", 0.5)}
    assert by_method["ld_dpo"] == {("ld_dpo", 0.1), ("ld_dpo", 0.5)}
    assert {name for method in ("sampo", "wpo", "alphapo") for name, _ in by_method[method]} == {
        "sampo", "dpo_wpo", "alphapo"}
