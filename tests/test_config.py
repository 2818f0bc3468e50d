"""Configs: every shipped file validates; each bad config fails before compilation with one line."""

from __future__ import annotations

import glob
import importlib
import os
import subprocess
import sys

import pytest

from lnpo import losses
from lnpo.config import ConfigError, loss_hparams, validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
METHOD_FILES = sorted(os.path.basename(f)[:-3] for f in glob.glob(os.path.join(REPO, "configs", "*.py"))
                      if os.path.basename(f) not in ("__init__.py", "base.py"))


def load(name: str):
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", METHOD_FILES)
def test_every_config_file_validates_and_names_a_known_objective(name):
    config = load(name)
    assert validate(config, num_devices=1) == (1, 1, 1)
    if config.stage == "po":
        assert config.loss.name in losses.names()
        losses.validate(config.loss.name, loss_hparams(config))


def test_the_study_methods_have_config_files():
    for name in ("sft", "dpo", "lndpo", "simpo", "ipo", "rm"):
        assert name in METHOD_FILES


@pytest.mark.parametrize(
    "changes, devices, message",
    [
        ({"loss.name": "dpoo"}, 1, r"^config\.loss\.name: unknown objective 'dpoo'; valid: .*ln_dpo"),
        ({"loss.beta": -1.0}, 1, r"^config\.loss: .*beta must be > 0"),
        ({"loss.beta": 0.0}, 1, r"^config\.loss: .*beta must be > 0"),
        ({"mesh.shape": (2, 2, 2)}, 1, r"^config\.mesh\.shape: .*needs 8 devices but 1"),
        ({"mesh.shape": (3, -1, 1)}, 8, r"^config\.mesh\.shape: .*does not divide the 8"),
        ({"mesh.shape": (1, 1, 1, 3), "data.seq_len": 64, "data.max_len": 64}, 3,
         r"^config\.mesh\.shape: the context axis \(3\) must divide the row length 64 \(data\.seq_len"),
        ({"mesh.shape": (1, 1, 1, 3), "data.layout": "shared_prompt", "data.max_len": 50}, 3, r"row length 100 "),
        ({"train.global_batch": 30, "train.micro_batches": 4}, 1,
         r"^config\.train\.global_batch: 30 is not divisible by train\.micro_batches \(4\)"),
        ({"train.global_batch": 12}, 8, r"^config\.train\.global_batch: .*not divisible by the data-parallel size 8"),
        ({"model.path": "/nonexistent/ckpt"}, 1, r"^config\.model\.path: '/nonexistent/ckpt' is not a directory"),
        ({"data.layout": "zigzag"}, 1, r"^config\.data\.layout: 'zigzag' is not one of padded, packed, shared_prompt"),
        ({"optim.lr": -1e-5}, 1, r"^config\.optim\.lr: must be a number > 0"),
        ({"model.attn_query_chunk": -8}, 1, r"^config\.model\.attn_query_chunk: "),
        ({"model.attn_implementation": "flash"}, 1,
         r"^config\.model\.attn_implementation: 'flash' is not supported; supported: xla, cudnn, splash"),
        ({"model.attn_implementation": "cudnn"}, 1,
         r"^config\.model\.attn_implementation: 'cudnn' needs compute_dtype bfloat16"),
        ({"model.attn_implementation": "cudnn", "model.compute_dtype": "bfloat16", "model.attn_query_chunk": 64}, 1,
         r"^config\.model\.attn_implementation: 'cudnn' never writes the scores; attn_query_chunk must be 0"),
        ({"model.attn_implementation": "splash"}, 1,
         r"^config\.model\.attn_implementation: 'splash' needs TPUs; this run's devices are cpu; use 'xla'$"),
        ({"model.attn_implementation": "cudnn", "model.compute_dtype": "bfloat16"}, 1,
         r"^config\.model\.attn_implementation: 'cudnn' needs NVIDIA GPUs; this run's devices are cpu"),
    ],
)
def test_bad_configs_fail_with_one_line_naming_the_field(changes, devices, message):
    config = load("lndpo")
    for key, value in changes.items():
        section, field = key.split(".")
        config[section][field] = value
    with pytest.raises(ConfigError, match=message) as info:
        validate(config, num_devices=devices)
    assert "\n" not in str(info.value)


def test_a_four_entry_mesh_shape_is_a_context_axis():
    config = load("lndpo")
    config.mesh.shape = (2, 1, 1, -1)
    assert validate(config, num_devices=8) == (2, 1, 1, 4)


def test_missing_model_directory_config_json(tmp_path):
    config = load("lndpo")
    config.model.path = str(tmp_path)
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        validate(config, num_devices=1)


@pytest.mark.parametrize("override, field", [("--config.loss.beta=-1", "config.loss"),
                                             ("--config.loss.name=nope", "config.loss.name"),
                                             ("--config.mesh.shape=(2,2,2)", "config.mesh.shape"),
                                             ("--config.model.path=/no/such/dir", "config.model.path")])
def test_cli_prints_one_error_line_and_no_traceback(tmp_path, override, field):
    proc = subprocess.run([sys.executable, "-m", "lnpo.main", "--config=configs/lndpo.py", override,
                           f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lnpo: error:")]
    assert len(lines) == 1 and lines[0].startswith(f"lnpo: error: {field}:"), proc.stderr
    assert "Traceback" not in proc.stderr


def _set(config, dotted: str, value) -> None:
    *parents, key = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[key] = value


@pytest.mark.parametrize("changes, message", [
    ({"optim.b1": 1.5}, r"^config\.optim\.b1: must be a number in \[0, 1\), got 1\.5$"),
    ({"optim.b1": -0.1}, r"^config\.optim\.b1: must be a number in \[0, 1\)"),
    ({"optim.b2": -0.1}, r"^config\.optim\.b2: must be a number in \[0, 1\), got -0\.1$"),
    ({"optim.b2": 1.0}, r"^config\.optim\.b2: must be a number in \[0, 1\)"),
    ({"optim.eps": -1.0}, r"^config\.optim\.eps: must be a number > 0, got -1\.0$"),
    ({"optim.eps": 0.0}, r"^config\.optim\.eps: must be a number > 0"),
    ({"optim.schedule": "cosin"}, r"^config\.optim\.schedule: 'cosin' is not one of cosine, linear, constant$"),
    ({"seed": -1}, r"^config\.seed: must be an integer >= 0, got -1$"),
    ({"eval.seed": -3}, r"^config\.eval\.seed: must be an integer >= 0"),
    ({"sft.warmup_steps": -1}, r"^config\.sft\.warmup_steps: must be an integer >= 0"),
    ({"model.tiny.num_heads": 3}, r"^config\.model\.tiny\.num_heads: 3 does not divide model\.tiny\.hidden_size"),
    ({"model.tiny.hidden_size": 0}, r"^config\.model\.tiny\.hidden_size: must be an integer > 0, got 0$"),
    ({"model.tiny.num_kv_heads": 3}, r"^config\.model\.tiny\.num_kv_heads: 3 does not divide model\.tiny\.num_heads"),
    ({"model.tiny.num_layers": -2}, r"^config\.model\.tiny\.num_layers: must be an integer > 0"),
    ({"model.tiny.hidden_size": 12, "model.tiny.num_heads": 4, "model.tiny.num_kv_heads": 2},
     r"^config\.model\.tiny\.num_heads: head size hidden_size / num_heads = 3 must be even"),
    ({"data.pku_preference": "nicer"}, r"^config\.data\.pku_preference: 'nicer' is not one of better, safer$"),
    ({"data.chat_template": "User:"}, r"^config\.data\.chat_template: 'User:' is not ''"),
    ({"train.export_dtype": "int8"}, r"^config\.train\.export_dtype: 'int8' is not one of , float32, bfloat16"),
    ({"data.columns.rejected": "answer_b"}, r"^config\.data\.columns\.rejected: a column mapping needs data\.source"),
    ({"data.source": "x.jsonl", "stage": "sft", "data.columns.chosen": "good"},
     r"^config\.data\.columns\.chosen: not an input column of sft data; allowed: prompt, completion"),
])
def test_optimizer_seed_tiny_model_and_data_fields_are_checked_naming_the_field(changes, message):
    config = load("lndpo")
    for key, value in changes.items():
        _set(config, key, value)
    with pytest.raises(ConfigError, match=message) as info:
        validate(config, num_devices=1)
    assert "\n" not in str(info.value)


def test_tiny_model_sizes_are_checked_only_for_the_tiny_model(tmp_path):
    config = load("lndpo")
    config.model.tiny.num_heads = 3
    config.model.path = str(tmp_path)
    with pytest.raises(ConfigError, match=r"^config\.model\.path: .* has no config\.json"):  # not model.tiny
        validate(config, num_devices=1)


def test_column_mapping_and_pku_label_are_settable_from_the_command_line():
    from absl import flags
    from ml_collections import config_flags

    from lnpo.config import data_columns

    argv = ["prog", f"--config={REPO}/configs/lndpo.py", "--config.data.columns.rejected=answer_b",
            "--config.data.columns.prompt=question", "--config.data.pku_preference=safer"]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    config = values.config
    assert data_columns(config) == {"prompt": "question", "rejected": "answer_b"}
    assert config.data.pku_preference == "safer"
    assert data_columns(load("lndpo")) == {}


def test_misspelt_config_field_is_one_line_with_the_suggestion(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lnpo.main", "--config=configs/lndpo.py", "--config.loss.bta=1",
                           f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == 'lnpo: error: config.loss.bta: no such config field; did you mean "beta" instead ' \
                                  'of "bta"?', proc.stderr
    assert not (tmp_path / "run").exists()


def test_the_mesh_by_named_axes_is_validated_like_the_tuple_form():
    config = load("lndpo")
    config.mesh.data, config.mesh.fsdp = 2, -1
    assert validate(config, num_devices=8) == (2, 4, 1)
    config.mesh.context = 2
    assert validate(config, num_devices=8) == (2, 2, 1, 2)
    config.mesh.fsdp = 3
    with pytest.raises(ConfigError, match=r"^config\.mesh: mesh shape \(2, 3, 1, 2\) needs 12 devices but 8 are"):
        validate(config, num_devices=8)
    config.mesh.context, config.data.max_len, config.data.max_prompt_len = 3, 64, 32
    config.mesh.fsdp = 1
    with pytest.raises(ConfigError, match=r"^config\.mesh\.context: the context axis \(3\) must divide the row length"):
        validate(config, num_devices=6)
    config.mesh.context, config.mesh.shape = 1, (1, -1, 1)
    with pytest.raises(ConfigError, match=r"^config\.mesh\.shape: \(1, -1, 1\) and mesh\.data=2 both set the mesh"):
        validate(config, num_devices=8)


def test_the_mesh_axes_are_settable_from_the_command_line():
    from absl import flags

    from lnpo.config_files import define_config_flag

    argv = ["prog", f"--config={REPO}/configs/lndpo.py", "--config.mesh.data=1", "--config.mesh.fsdp=-1"]
    values = flags.FlagValues()
    define_config_flag(argv, flag_values=values)
    values(argv)
    assert validate(values.config, num_devices=4) == (1, 4, 1)
