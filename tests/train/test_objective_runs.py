"""Objectives with per-token needs through the real trainer: cached reference == in-step reference
(LD-DPO's cache stores its shared-prefix sums, and its key says so); SamPO refuses a cached reference."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from train_helpers import losses_of, small_config

from lnpo.config import ConfigError
from lnpo.train.run import run

LD = {"loss.name": "ld_dpo", "loss.beta": 0.5, "loss.alpha": 0.3}


@pytest.mark.slow
def test_ld_dpo_cached_reference_equals_in_step_and_stores_its_shared_sums(tmp_path, tiny_sft_dir, task_files):
    cache_dir = str(tmp_path / "cache")
    cached = small_config(tiny_sft_dir, task_files, **LD, **{"reference.mode": "cache",
                                                             "reference.cache_dir": cache_dir})
    in_step = small_config(tiny_sft_dir, task_files, **LD, **{"reference.mode": "in_step"})
    run(cached, str(tmp_path / "cached"))
    run(in_step, str(tmp_path / "in_step"))
    a, b = losses_of(str(tmp_path / "cached")), losses_of(str(tmp_path / "in_step"))
    assert a.keys() == b.keys() and len(a) == 4
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-5, atol=1e-6)
    files = sorted(os.listdir(cache_dir))
    assert len(files) == 2
    with np.load(os.path.join(cache_dir, files[0]), allow_pickle=False) as f:
        assert sorted(f.files) == ["chosen", "chosen_shared", "rejected", "rejected_shared", "sha256"]
        assert np.all(f["chosen_shared"] >= f["chosen"]) and np.any(f["chosen_shared"] != f["chosen"])
    # a sums-only objective on the same model and data uses another key (and file): it stores less
    dpo = small_config(tiny_sft_dir, task_files, **{"loss.name": "dpo", "loss.beta": 0.1,
                                                    "reference.cache_dir": cache_dir, "train.steps": 1})
    run(dpo, str(tmp_path / "dpo"))
    assert len(os.listdir(cache_dir)) == 4


def test_sampo_with_a_cached_reference_is_a_config_error(tmp_path, tiny_sft_dir, task_files):
    config = small_config(tiny_sft_dir, task_files, **{"loss.name": "sampo", "loss.beta": 0.1,
                                                       "reference.mode": "cache"})
    with pytest.raises(ConfigError, match=r"^config.reference.mode: sampo re-draws its tokens every step"):
        run(config, str(tmp_path / "sampo"))


@pytest.mark.slow
def test_sampo_and_wpo_train_in_step(tmp_path, tiny_sft_dir, task_files):
    for name in ("sampo", "dpo_wpo"):
        config = small_config(tiny_sft_dir, task_files, **{"loss.name": name, "loss.beta": 0.1,
                                                           "reference.mode": "in_step"})
        run(config, str(tmp_path / name))
        got = losses_of(str(tmp_path / name))
        assert len(got) == 4 and all(np.isfinite(v) for v in got.values())


@pytest.mark.slow
def test_kto_on_unpaired_preferences_cached_reference_equals_in_step(tmp_path, tiny_sft_dir, task_files):
    """KTO trains on the preference file unpaired (2 examples per pair); the cached reference (completion and
    KL completion log-probs, a fixed column) gives the same losses as the in-step one."""
    kto = {"loss.name": "kto", "loss.beta": 0.5, "loss.desirable_weight": 1.0, "loss.undesirable_weight": 1.0}
    cached = small_config(tiny_sft_dir, task_files, **kto, **{"reference.mode": "cache",
                                                              "reference.cache_dir": str(tmp_path / "cache")})
    in_step = small_config(tiny_sft_dir, task_files, **kto, **{"reference.mode": "in_step"})
    run(cached, str(tmp_path / "cached"))
    run(in_step, str(tmp_path / "in_step"))
    a, b = losses_of(str(tmp_path / "cached")), losses_of(str(tmp_path / "in_step"))
    assert len(a) == 4
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-5, atol=1e-6)
    rows = [json.loads(line) for line in open(os.path.join(str(tmp_path / "cached"), "metrics.jsonl"))]
    assert any(0.0 < r.get("label", -1) < 1.0 for r in rows)  # both kinds of example in the batches


@pytest.mark.slow
def test_an_f_divergence_sibling_trains_through_the_trainer(tmp_path, tiny_sft_dir, task_files):
    """ld_dpo_alpha_div_wpo reads the shared-prefix sums and WPO's aligned sums and scores the log-ratios by an
    alpha-divergence: it trains with finite losses, and its losses are not ld_dpo's."""
    got = {}
    for name, extra in (("ld_dpo_alpha_div_wpo", {"loss.f_alpha": 0.5}), ("ld_dpo", {})):
        config = small_config(tiny_sft_dir, task_files, **{**LD, **extra, "loss.name": name,
                                                           "reference.mode": "in_step"})
        run(config, str(tmp_path / name))
        got[name] = losses_of(str(tmp_path / name))
    a, b = got["ld_dpo_alpha_div_wpo"], got["ld_dpo"]
    assert len(a) == 4 and all(np.isfinite(v) for v in a.values())
    assert a.keys() == b.keys() and not np.allclose([a[k] for k in a], [b[k] for k in a])
