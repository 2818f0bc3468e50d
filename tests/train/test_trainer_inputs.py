"""The trainer's checks of its model and tokenizer: before the data is read or anything compiled, in one line."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from train_helpers import small_config

from lnpo.errors import ConfigError, ModelError
from lnpo.models import preflight
from lnpo.train import trainer

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")


def _model_copy(src: str, dst, *, tokenizer=True, **config_changes) -> str:
    """``src``'s weights in ``dst`` (its tokenizer files too unless ``tokenizer=False``), config.json edited."""
    dst = str(dst)
    if tokenizer:
        shutil.copytree(src, dst)
    else:
        os.makedirs(dst)
        for name in MODEL_FILES:
            shutil.copy(os.path.join(src, name), dst)
    path = os.path.join(dst, "config.json")
    with open(path) as f:
        hf = json.load(f)
    hf.update(config_changes)
    with open(path, "w") as f:
        json.dump(hf, f)
    return dst


def _no_data(*args, **kwargs):
    pytest.fail("the data was read before the model was checked")


def test_unsupported_model_type_fails_before_the_data_is_read(tmp_path, tiny_sft_dir, task_files, monkeypatch):
    model = _model_copy(tiny_sft_dir, tmp_path / "gpt2", model_type="gpt2")
    monkeypatch.setattr(trainer, "prepare_data", _no_data)
    with pytest.raises(ModelError) as e:
        trainer.train_stage(small_config(model, task_files), str(tmp_path / "run"), init_path=model)
    assert str(e.value) == (f"{model}/config.json: model_type 'gpt2' is not supported; supported: gemma, gemma2, "
                            "llama, mistral, phi3, qwen2, qwen3")


def test_model_directory_without_tokenizer_files_names_them_and_data_tokenizer(tmp_path, tiny_sft_dir, task_files):
    model = _model_copy(tiny_sft_dir, tmp_path / "bare", tokenizer=False)
    with pytest.raises(ModelError) as e:
        trainer.train_stage(small_config(model, task_files), str(tmp_path / "run"), init_path=model)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{model}: no tokenizer files (none of tokenizer.json")
    assert "config.data.tokenizer" in text


def test_vocab_mismatch_fails_before_compiling_naming_both_sizes(tmp_path, tiny_sft_dir, task_files, monkeypatch):
    from flax import nnx

    from lnpo.models import Decoder, ModelConfig, save_pretrained

    small = ModelConfig.tiny(vocab_size=8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                             num_kv_heads=2, max_position_embeddings=256)
    model = str(tmp_path / "small_vocab")
    save_pretrained(Decoder(small, rngs=nnx.Rngs(0)), model)
    config = small_config(model, task_files, **{"data.tokenizer": tiny_sft_dir, "reference.mode": "in_step"})
    monkeypatch.setattr(trainer, "fit", lambda *a, **k: pytest.fail("the step was compiled and run"))
    with pytest.raises(ModelError) as e:
        trainer.train_stage(config, str(tmp_path / "run"), init_path=model)
    text = str(e.value)
    size = len(preflight.load_tokenizer(tiny_sft_dir))
    assert text.startswith(f"vocabulary mismatch: the tokenizer {tiny_sft_dir} has {size} tokens and the data use id ")
    assert f"the model {model} has vocab_size 8 (config.json)" in text


def _safetensors_dtypes(directory: str) -> set[str]:
    from lnpo.models.safetensors_io import SafetensorsFile

    f = SafetensorsFile(os.path.join(directory, "model.safetensors"))
    return {entry[0] for entry in f.entries.values()}


@pytest.mark.parametrize("export_dtype, stored", [("", "BF16"), ("float32", "F32")])
def test_bfloat16_model_is_exported_in_its_own_dtype_unless_export_dtype_says(tmp_path, tiny_sft_dir, task_files,
                                                                             export_dtype, stored):
    from lnpo.models import from_pretrained, save_pretrained

    bf16 = str(tmp_path / "bf16")
    save_pretrained(from_pretrained(tiny_sft_dir), bf16, tokenizer=preflight.load_tokenizer(tiny_sft_dir),
                    dtype="bfloat16")
    assert _safetensors_dtypes(bf16) == {"BF16"}
    config = small_config(bf16, task_files, **{"train.steps": 1, "train.export_dtype": export_dtype,
                                               "train.eval_batches": 0})
    out = trainer.train_stage(config, str(tmp_path / "run"), init_path=bf16)
    assert _safetensors_dtypes(out["export"]) == {stored}
    with open(os.path.join(out["export"], "config.json")) as f:
        assert json.load(f)["torch_dtype"] == {"BF16": "bfloat16", "F32": "float32"}[stored]


def test_tokenizer_without_chat_template_trains_with_data_chat_template(tmp_path, tiny_sft_dir, task_files):
    tokenizer = preflight.load_tokenizer(tiny_sft_dir)
    tokenizer.chat_template = None
    model = _model_copy(tiny_sft_dir, tmp_path / "base_model", tokenizer=False)
    tokenizer.save_pretrained(model)
    assert not getattr(preflight.load_tokenizer(model), "chat_template", None)
    with pytest.raises(ConfigError, match=r"^config\.data\.chat_template: the tokenizer .* has no chat template"):
        trainer.train_stage(small_config(model, task_files), str(tmp_path / "run"), init_path=model)
    config = small_config(model, task_files, **{"data.chat_template": "plain", "train.steps": 1,
                                                "train.eval_batches": 0})
    out = trainer.train_stage(config, str(tmp_path / "run_plain"), init_path=model)
    with open(os.path.join(str(tmp_path / "run_plain"), "run.json")) as f:
        assert json.load(f)["chat_template"] == "plain"  # what lnpo.evaluate renders prompts with
    assert out["step"] == 1
