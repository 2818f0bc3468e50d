"""Bad checkpoints and unsupported configs fail early with one clear line."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from flax import nnx

import lnpo.models as M
from lnpo.models.safetensors_io import SafetensorsFile, write_file

CONFIG = M.ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("good"))
    M.save_pretrained(M.Decoder(CONFIG, rngs=nnx.Rngs(0)), path)
    return path


@pytest.fixture
def ckpt(good_dir, tmp_path):
    """A fresh copy of a valid checkpoint to break."""
    path = str(tmp_path / "ckpt")
    shutil.copytree(good_dir, path)
    return path


def _edit_config(path, **changes):
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)


def _rewrite_tensors(path, edit):
    """edit(dict name -> array) -> dict; rewrites model.safetensors."""
    fname = os.path.join(path, "model.safetensors")
    src = SafetensorsFile(fname)
    tensors = edit({n: np.array(src.array(n)) for n in src.keys()})
    del src
    os.remove(fname)
    write_file(fname, tensors.items())


def _one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_valid_checkpoint_loads(ckpt):
    assert M.from_pretrained(ckpt).config == CONFIG


def test_unknown_model_type(ckpt):
    _edit_config(ckpt, model_type="bert")
    with pytest.raises(ValueError) as e:
        M.from_pretrained(ckpt)
    assert _one_line(e) == (  # the file is named in full
        f"{ckpt}/config.json: model_type 'bert' is not supported; supported: gemma, gemma2, llama, mistral, phi3, "
        "qwen2, qwen3"
    )


def test_unsupported_rope_type(ckpt):
    _edit_config(ckpt, rope_scaling={"rope_type": "yarn", "factor": 4.0}, rope_parameters=None)
    with pytest.raises(ValueError) as e:
        M.from_pretrained(ckpt)
    assert _one_line(e).startswith(f"{ckpt}/config.json: rope_scaling.rope_type 'yarn' is not supported")


def test_unsupported_activation(ckpt):
    _edit_config(ckpt, hidden_act="gelu_fast")
    with pytest.raises(ValueError) as e:
        M.from_pretrained(ckpt)
    assert "hidden_act 'gelu_fast' is not supported" in _one_line(e)


def test_quantized_checkpoint(ckpt):
    _edit_config(ckpt, quantization_config={"quant_method": "gptq"})
    with pytest.raises(ValueError) as e:
        M.from_pretrained(ckpt)
    assert "quantization_config 'gptq'" in _one_line(e)


def test_missing_tensor(ckpt):
    _rewrite_tensors(ckpt, lambda t: {n: a for n, a in t.items() if n != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(ValueError) as e:
        M.from_pretrained(ckpt)
    msg = _one_line(e)
    assert "model.safetensors: missing tensor 'model.layers.1.mlp.up_proj.weight'" in msg and "(32, 16)" in msg


def test_wrong_shape(ckpt):
    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 16), np.float32)
        return t

    _rewrite_tensors(ckpt, edit)
    with pytest.raises(ValueError) as e:
        M.from_pretrained(ckpt)
    msg = _one_line(e)
    assert "tensor 'model.layers.0.self_attn.k_proj.weight' has shape (16, 16)" in msg and "(8, 16)" in msg


def test_unexpected_tensor(ckpt):
    def edit(t):
        t["model.layers.0.self_attn.q_proj.bias"] = np.zeros((16,), np.float32)
        return t

    _rewrite_tensors(ckpt, edit)
    with pytest.raises(ValueError) as e:
        M.from_pretrained(ckpt)
    assert "unexpected tensor 'model.layers.0.self_attn.q_proj.bias'" in _one_line(e)


def test_pickle_only_checkpoint_is_refused(ckpt):
    os.remove(os.path.join(ckpt, "model.safetensors"))
    with open(os.path.join(ckpt, "pytorch_model.bin"), "wb") as f:
        f.write(b"\x80\x04 not a safetensors file; must never be unpickled")
    with pytest.raises(FileNotFoundError) as e:
        M.from_pretrained(ckpt)
    msg = _one_line(e)
    assert "pytorch_model.bin" in msg and "safetensors only" in msg


def test_missing_config_and_directory(ckpt, tmp_path):
    os.remove(os.path.join(ckpt, "config.json"))
    with pytest.raises(FileNotFoundError) as e:
        M.from_pretrained(ckpt)
    assert "config.json" in _one_line(e)
    with pytest.raises(FileNotFoundError):
        M.from_pretrained(str(tmp_path / "nowhere"))


def test_index_pointing_to_missing_file(ckpt):
    src = SafetensorsFile(os.path.join(ckpt, "model.safetensors"))
    index = {"metadata": {}, "weight_map": {n: "model-00002-of-00002.safetensors" for n in src.keys()}}
    with open(os.path.join(ckpt, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    with pytest.raises(FileNotFoundError) as e:
        M.from_pretrained(ckpt)
    assert "model-00002-of-00002.safetensors" in _one_line(e)


def test_truncated_safetensors(ckpt):
    fname = os.path.join(ckpt, "model.safetensors")
    with open(fname, "r+b") as f:
        f.truncate(os.path.getsize(fname) - 64)
    with pytest.raises(ValueError) as e:
        M.from_pretrained(ckpt)
    assert "model.safetensors" in _one_line(e)


def test_config_feature_the_family_cannot_express():
    with pytest.raises(ValueError) as e:
        CONFIG.replace(qk_norm=True).to_hf()
    assert "qk_norm=True" in _one_line(e) and "'llama'" in str(e.value)
    with pytest.raises(ValueError, match="num_kv_heads"):
        M.ModelConfig(num_heads=4, num_kv_heads=3)
