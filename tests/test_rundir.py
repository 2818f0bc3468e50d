"""lnpo.rundir owns the run directory and run.json's schema; lnpo.eval_settings the evaluation's one set of
defaults."""

from __future__ import annotations

import json
import os
import sys

import pytest

from lnpo import rundir
from lnpo.errors import CheckpointError, ConfigError, InputNotFound
from lnpo.eval_settings import EvalSettings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from configs.lndpo import get_config

    return get_config()


def test_run_info_round_trips_through_run_json(tmp_path):
    info = rundir.RunInfo(name="x", stage="po", method="ln_dpo", loss={"beta": 0.1}, lr=1e-5, seed=3, steps=7,
                          export=str(tmp_path / "export"), eval_prompts="p.jsonl", scorer="embedded",
                          eval=EvalSettings(max_new_tokens=8, stop_strings=("\n\n",), max_prompt_len=16))
    path = rundir.write_run_info(str(tmp_path), info)
    assert path == os.path.join(str(tmp_path), "run.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    assert data["eval"]["stop_strings"] == ["\n\n"] and "error" not in data and data["status"] == "trained"
    assert rundir.read_run_info(str(tmp_path)) == info


def test_an_older_run_json_reads_with_every_prompt_and_the_default_settings(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"method": "dpo", "eval": {"max_new_tokens": 8,
                                                                             "max_prompts": None}}))
    info = rundir.read_run_info(str(tmp_path))
    assert info.eval == EvalSettings(max_new_tokens=8) and info.eval.max_prompts == 0


@pytest.mark.parametrize("text,error,match", [(None, InputNotFound, "missing"), ("{", CheckpointError, "invalid JSON"),
                                              ("[1]", CheckpointError, "not a JSON object"),
                                              ('{"eval": {"max_tokens": 3}}', ConfigError, "max_tokens")])
def test_a_missing_or_broken_run_json_is_one_line_naming_it(tmp_path, text, error, match):
    if text is not None:
        (tmp_path / "run.json").write_text(text)
    with pytest.raises(error, match=match) as info:
        rundir.read_run_info(str(tmp_path))
    assert "run.json" in str(info.value) and "\n" not in str(info.value)


def test_the_configs_eval_fields_are_the_settings_defaults_and_build_the_settings():
    config = _config()
    assert {k: config.eval[k] for k in EvalSettings.config_defaults()} == EvalSettings.config_defaults()
    config.eval.max_new_tokens, config.eval.top_k = 5, 3
    settings = EvalSettings.from_config(config)
    assert settings.max_new_tokens == 5 and settings.top_k == 3
    assert settings.max_prompt_len == config.data.max_prompt_len and settings.batch_size == EvalSettings().batch_size


def test_invalid_settings_name_their_field():
    with pytest.raises(ConfigError, match=r"^eval\.top_p: invalid value 0"):
        EvalSettings(top_p=0)
    assert EvalSettings().replace(max_new_tokens=None, top_k=2) == EvalSettings(top_k=2)  # None: an unset flag


def test_runs_share_the_runs_root_and_the_workdir_layout_is_named_here(tmp_path):
    config = _config()
    config.runs_root = str(tmp_path / "runs")
    paths = rundir.StagePaths.for_config(config)
    assert paths.runs_root == str(tmp_path / "runs")
    assert paths.reference_cache == os.path.join(paths.runs_root, "reference_cache")
    assert paths.embedded_task.startswith(paths.runs_root + os.sep)
    assert rundir.is_embedded_sft_workdir(rundir.embedded_sft_workdir(config))
    w = str(tmp_path / "w")
    assert rundir.eval_summary(w) == os.path.join(w, "eval", "summary.json")
    assert rundir.samples_path(rundir.eval_dir(w), sft=True) == os.path.join(w, "eval", "sft_samples.jsonl")
