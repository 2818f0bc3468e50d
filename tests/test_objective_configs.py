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


def test_a_sweep_line_selects_an_f_divergence_sibling(tmp_path):
    """Any objective, f-divergence siblings included, joins a sweep with one line over a base method's config;
    its extra hyperparameter is validated with the config (one-line ConfigError)."""
    from configs.sweeps import method, new_sweep
    from lnpo.errors import ConfigError

    sweep = new_sweep("f_divergences", seeds=(0,))
    sweep.methods.ipo_alpha_div = method("ipo", beta=(0.1,), overrides={"loss": {"name": "ipo_alpha_div",
                                                                                 "f_alpha": 0.5}})
    sweep.methods.hinge_js = method("hinge", beta=(0.2,), overrides={"loss": {"name": "hinge_js"}})
    specs = expand(sweep, str(tmp_path), config_root=REPO)
    got = {}
    for spec in specs:
        config = spec.config()
        validate(config, num_devices=1)
        got[spec.method] = (config.loss.name, loss_hparams(config))
    assert got == {"ipo_alpha_div": ("ipo_alpha_div", {"beta": 0.1, "f_alpha": 0.5}),
                   "hinge_js": ("hinge_js", {"beta": 0.2})}
    config = next(spec for spec in specs if spec.method == "ipo_alpha_div").config()
    config.loss.f_alpha = 1.5
    with pytest.raises(ConfigError, match=r"config.loss: ipo_alpha_div: f_alpha must be in \(0, 1\), got 1.5"):
        validate(config, num_devices=1)
