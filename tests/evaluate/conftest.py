"""Fixtures for tests/evaluate: tiny random decoders and the embedded task's tokenizer (all offline)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from lnpo.models import Decoder, ModelConfig  # noqa: E402

VOCAB = 96


def tiny_config(vocab_size: int = VOCAB, **overrides) -> ModelConfig:
    """Two layers, hidden 32; initializer_range 0.2 so next-token distributions are far from uniform."""
    kw = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
              initializer_range=0.2, tie_embeddings=True)
    kw.update(overrides)
    return ModelConfig(**kw)


@pytest.fixture(scope="session", name="tiny_config")
def tiny_config_fixture():
    """:func:`tiny_config` (a ModelConfig factory)."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny_model():
    return Decoder(tiny_config(), rngs=nnx.Rngs(0))


@pytest.fixture(scope="session")
def other_model():
    return Decoder(tiny_config(), rngs=nnx.Rngs(1))


@pytest.fixture(scope="session")
def task(tmp_path_factory):
    """The embedded task (a few rows per split) and its tokenizer."""
    from transformers import AutoTokenizer

    from lnpo.data import embedded

    d = tmp_path_factory.mktemp("embedded")
    paths = embedded.materialize(d, seed=0, sizes={"sft": 4, "train_prefs": 4, "eval_prefs": 4, "ood_prompts": 5})
    paths["tokenizer_obj"] = AutoTokenizer.from_pretrained(paths["tokenizer"])
    return paths
