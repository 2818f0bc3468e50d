"""Scorers: the embedded ground truth, and the JAX reward model against transformers' PyTorch model."""

from __future__ import annotations

import numpy as np
import pytest

from lnpo.data import embedded
from lnpo.evaluate.scorers import (
    EmbeddedScorer,
    JaxRewardModelScorer,
    TorchRewardModelScorer,
    make_scorer,
    prompt_text,
)

PROMPTS = [
    [{"role": "user", "content": "What is 3 + 4?"}],
    "Write apple two times.",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which is bigger, 12 or 40?"}],
]
RESPONSES = ["The answer is 7.", "Let me think about this. The answer is apple apple. I hope this helps!",
             "The answer is 12."]


def test_embedded_scorer():
    scorer = make_scorer("embedded")
    assert isinstance(scorer, EmbeddedScorer)
    got = scorer.score(PROMPTS, RESPONSES)
    want = [embedded.score("What is 3 + 4?", RESPONSES[0]), embedded.score("Write apple two times.", RESPONSES[1]),
            embedded.score("Which is bigger, 12 or 40?", RESPONSES[2])]
    np.testing.assert_array_equal(got, want)
    assert got[0] == 1.0 and 0.5 < got[1] < 1.0 and got[2] == pytest.approx(0.2)
    assert got.dtype == np.float64 and got.shape == (3,)
    with pytest.raises(ValueError):
        scorer.score(PROMPTS, RESPONSES[:2])
    assert make_scorer("") is None and make_scorer(None) is None
    with pytest.raises(ValueError, match="unknown scorer"):
        make_scorer("bogus")
    assert prompt_text(PROMPTS[2]) == "system: Be brief.\n\nuser: Which is bigger, 12 or 40?"


@pytest.fixture(scope="module")
def torch_rm_dir(task, tmp_path_factory):
    """A random tiny transformers LlamaForSequenceClassification (1 label) with the embedded tokenizer."""
    torch = pytest.importorskip("torch")
    import transformers

    tok = task["tokenizer_obj"]
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
                                   max_position_embeddings=128, num_labels=1, pad_token_id=tok.pad_token_id,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = transformers.LlamaForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    d = str(tmp_path_factory.mktemp("torch_rm"))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model


def test_jax_reward_model_equals_transformers(torch_rm_dir):
    import torch

    path, model = torch_rm_dir
    scorer = make_scorer(f"jax:{path}", batch_size=4)
    assert isinstance(scorer, JaxRewardModelScorer) and scorer.spec == f"jax:{path}"
    got = scorer.score(PROMPTS, RESPONSES)
    tok = scorer.tokenizer
    want = []
    for p, r in zip(PROMPTS, RESPONSES):
        ids = scorer.encode(p, r)
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id  # the full chat rendering
        with torch.no_grad():
            want.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    want = np.asarray(want)
    assert np.ptp(want) > 1e-3  # the scores differ, so the comparison can fail
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    torch_scorer = make_scorer(f"torch:{path}", batch_size=4)
    assert isinstance(torch_scorer, TorchRewardModelScorer) and torch_scorer.input_format == "chat"
    np.testing.assert_allclose(torch_scorer.score(PROMPTS, RESPONSES), want, rtol=1e-4, atol=1e-5)


def test_reward_model_rejects_causal_lm(tmp_path, task, tiny_config):
    from flax import nnx

    from lnpo.models import Decoder, save_pretrained

    save_pretrained(Decoder(tiny_config(), rngs=nnx.Rngs(0)), str(tmp_path), tokenizer=task["tokenizer_obj"])
    with pytest.raises(ValueError, match="not a reward model"):
        JaxRewardModelScorer(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        make_scorer(f"jax:{tmp_path}/missing")


def test_torch_scorer_refuses_a_pickle_only_folder_and_never_unpickles(torch_rm_dir, tmp_path, monkeypatch):
    """A folder with only pytorch_model.bin is refused in one line; torch.load is never called."""
    import shutil

    import torch

    from lnpo.errors import ModelError

    path, model = torch_rm_dir
    pickled = tmp_path / "pickled_rm"
    shutil.copytree(path, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load (unpickling) was called"))
    with pytest.raises(ModelError) as e:
        make_scorer(f"torch:{pickled}")
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{pickled}: only pickle weights (pytorch_model.bin)")
    assert "never unpickles" in text


def test_torch_scorer_loads_with_use_safetensors(torch_rm_dir, monkeypatch):
    import transformers

    seen = {}
    original = transformers.AutoModelForSequenceClassification.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", spy)
    make_scorer(f"torch:{torch_rm_dir[0]}")
    assert seen.get("use_safetensors") is True and seen.get("trust_remote_code") is False
