"""GGUF import (``lnpo.models.convert``): a tiny Llama written the way llama.cpp writes it converts back to
the same model, with its tokenizer, chat template and end-of-turn ids; bad files fail in one line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf_tiny import CHATML, tiny_llama, write_gguf, write_llama_gguf

import lnpo.models as M
from lnpo.errors import ConfigError, ModelError
from lnpo.models.convert import SUPPORTED_ARCHITECTURES, convert_gguf, main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ids(batch=2, seq=10, vocab=36, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(4, vocab, size=(batch, seq)).astype(np.int32)


@pytest.mark.parametrize("tie", [True, False])
def test_converted_tiny_llama_is_the_model_it_was_written_from(tmp_path, tie):
    import torch
    import transformers

    original = tiny_llama(tie=tie)
    gguf_path, out = str(tmp_path / "tiny.gguf"), str(tmp_path / "hf")
    write_llama_gguf(gguf_path, original)
    summary = convert_gguf(gguf_path, out)
    assert summary["tie_word_embeddings"] is tie and summary["tensor_types"] == {"F32": 20 + (not tie)}

    ids = _ids()
    with torch.no_grad():
        want = original(input_ids=torch.as_tensor(ids).long()).logits.numpy()
    ours = np.asarray(M.from_pretrained(out)(jnp.asarray(ids)))
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-5 * np.abs(want).max())
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        np.testing.assert_allclose(back(input_ids=torch.as_tensor(ids).long()).logits.numpy(), want, rtol=0,
                                   atol=1e-5 * np.abs(want).max())

    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert "quantization_config" not in config and config["tie_word_embeddings"] is tie
    from safetensors import safe_open

    with safe_open(os.path.join(out, "model.safetensors"), "np") as f:
        assert ("lm_head.weight" in f.keys()) is not tie
        assert all(f.get_tensor(k).dtype == np.float32 for k in f.keys())


def test_end_of_turn_chat_template_and_tokenizer_are_written(tmp_path):
    import transformers

    gguf_path, out = str(tmp_path / "tiny.gguf"), str(tmp_path / "hf")
    write_llama_gguf(gguf_path, tiny_llama(), eot=True)
    convert_gguf(gguf_path, out)
    for name in ("config.json", "generation_config.json"):
        with open(os.path.join(out, name)) as f:
            assert json.load(f)["eos_token_id"] == [2, 3], name  # EOS and the file's end-of-turn token
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        tok_cfg = json.load(f)
    assert tok_cfg["model_max_length"] == 128 and tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHATML and (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    ids = tok.apply_chat_template([{"role": "user", "content": "the cat"}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    # <|im_start|> user \n the Ġcat <|im_end|> \n <|im_start|> assistant \n, no BOS added (add_bos_token false)
    assert ids[0] == 1 and ids.count(2) == 1 and tok.decode(ids) == "<|im_start|>user\nthe cat<|im_end|>\n" \
        "<|im_start|>assistant\n"
    # the file's merges, in rank order: "Ġ a", "Ġ t", "h e", "Ġt he"
    assert tok.convert_ids_to_tokens(tok(" the cat")["input_ids"]) == ["Ġthe", "Ġ", "c", "a", "t"]


def test_without_end_of_turn_the_eos_stays_a_single_id(tmp_path):
    gguf_path, out = str(tmp_path / "tiny.gguf"), str(tmp_path / "hf")
    write_llama_gguf(gguf_path, tiny_llama(), eot=False)
    convert_gguf(gguf_path, out)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["eos_token_id"] == 2


def _assert_nothing_written(tmp_path, out):
    assert not os.path.exists(out)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".convert-")]


def test_unsupported_architecture_is_one_line_naming_file_and_supported(tmp_path):
    path, out = str(tmp_path / "bloom.gguf"), str(tmp_path / "hf")
    write_gguf(path, "bloom", {"token_embd.weight": np.zeros((4, 4), np.float32)})
    with pytest.raises(ModelError) as e:
        convert_gguf(path, out)
    msg = str(e.value)
    assert "\n" not in msg and path in msg and "'bloom'" in msg and ", ".join(SUPPORTED_ARCHITECTURES) in msg
    _assert_nothing_written(tmp_path, out)


def test_unreadable_quantization_type_names_the_tensor_and_the_readable_types(tmp_path):
    path, out = str(tmp_path / "q81.gguf"), str(tmp_path / "hf")
    write_gguf(path, "llama", {"token_embd.weight": np.zeros((4, 4), np.float32),
                               "blk.0.attn_q.weight": (np.zeros((1, 40), np.uint8), GGMLQuantizationType.Q8_1)})
    with pytest.raises(ModelError) as e:
        convert_gguf(path, out)
    msg = str(e.value)
    assert "\n" not in msg and path in msg and "'blk.0.attn_q.weight'" in msg and "Q8_1" in msg
    assert "readable types: F32, F16, Q4_0, Q4_1" in msg
    _assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("content", [b"not a gguf file at all" * 4, b"GGUF\x03\x00"])
def test_a_file_that_is_not_gguf_is_one_line(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=r"bad\.gguf: not a readable GGUF file"):
        convert_gguf(str(path), str(tmp_path / "hf"))
    with pytest.raises(ModelError, match="no such GGUF file"):
        convert_gguf(str(tmp_path / "absent.gguf"), str(tmp_path / "hf"))


def test_a_missing_package_of_the_extra_names_it_and_the_install_command(tmp_path, monkeypatch):
    path = str(tmp_path / "tiny.gguf")
    write_llama_gguf(path, tiny_llama())
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ConfigError) as e:
        convert_gguf(path, str(tmp_path / "hf"))
    assert str(e.value) == (f"{path}: converting a GGUF file needs the packages gguf, accelerate, torch "
                            "(missing: gguf); install them with pip install -e \".[gguf]\"")


def test_a_non_empty_output_directory_is_refused(tmp_path):
    path, out = str(tmp_path / "tiny.gguf"), tmp_path / "hf"
    write_llama_gguf(path, tiny_llama())
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="exists and is not empty"):
        convert_gguf(path, str(out))
    assert os.listdir(out) == ["keep.txt"]


def test_cli_prints_a_summary_or_one_error_line(tmp_path, capsys):
    path = str(tmp_path / "tiny.gguf")
    write_llama_gguf(path, tiny_llama())
    assert main(["--gguf", path, "--out", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "lnpo: converted" in out and "llama" in out and "tied embeddings True" in out
    proc = subprocess.run([sys.executable, "-m", "lnpo.models.convert", "--gguf", str(tmp_path / "nope.gguf"),
                           "--out", str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"lnpo: error: {tmp_path / 'nope.gguf'}: no such GGUF file"]
