"""Fixtures for trainer tests: a tiny HF-format SFT checkpoint and small preference files, offline."""

from __future__ import annotations

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def task_files(tmp_path_factory):
    """The embedded task, small: a tokenizer and short JSONL splits."""
    from lnpo.data.embedded import materialize

    root = tmp_path_factory.mktemp("task")
    return materialize(str(root), seed=0, sizes={"sft": 64, "train_prefs": 64, "eval_prefs": 16, "ood_prompts": 8})


@pytest.fixture(scope="session")
def tiny_sft_dir(tmp_path_factory, task_files):
    """A tiny random Llama-style model saved in Hugging Face format with the task's tokenizer."""
    from flax import nnx
    from transformers import AutoTokenizer

    from lnpo.models import Decoder, ModelConfig, save_pretrained

    tokenizer = AutoTokenizer.from_pretrained(task_files["tokenizer"])
    config = ModelConfig.tiny(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    model = Decoder(config, rngs=nnx.Rngs(0))
    path = str(tmp_path_factory.mktemp("sft") / "model")
    save_pretrained(model, path, tokenizer=tokenizer)
    return path
