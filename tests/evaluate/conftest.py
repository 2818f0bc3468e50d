"""Fixtures for tests/evaluate: tiny random decoders and the embedded task's tokenizer (all offline)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
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


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, ids):
    return nnx.merge(graphdef, state)(ids)


@pytest.fixture(scope="session")
def forward():
    """``forward(model, ids) -> logits`` (numpy): a jitted full forward pass, no cache (positions 0..T-1, causal)."""

    def f(model, ids):
        graphdef, state = nnx.split(model)
        return np.asarray(_forward(graphdef, state, jnp.asarray(ids, jnp.int32)))

    return f


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


@pytest.fixture(scope="session")
def saved_models(task, tmp_path_factory):
    """HF directories (with the embedded tokenizer) of tiny random causal LMs: ``policy``, ``sft`` (other
    weights) and ``policy_copy`` (the policy's weights in another directory)."""
    from lnpo.models import save_pretrained

    tok = task["tokenizer_obj"]
    cfg = tiny_config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name, seed in (("policy", 0), ("sft", 1), ("policy_copy", 0)):
        dirs[name] = str(root / name)
        save_pretrained(Decoder(cfg, rngs=nnx.Rngs(seed)), dirs[name], tokenizer=tok)
    return dirs
