"""Parity with transformers' PyTorch models: import, export, every family's features.

For each family a tiny random HF model is saved, loaded with
``lnpo.models.from_pretrained`` and compared on right-padded random ids; then
``lnpo.models.save_pretrained`` output is reloaded by transformers and compared
again. A sensitivity check proves each family's distinguishing feature (sliding
window, soft-caps, RoPE scaling) changes the reference logits on this input, so
the parity check would catch an implementation that ignored it.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from hf_tiny import FAMILIES, build_hf_model, hf_logits, random_batch

import lnpo.models as M

# family -> HF config overrides that switch its distinguishing feature off.
FEATURE_OFF = {
    "llama3_tied": dict(rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    "llama_untied_bias": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "mistral_sliding": dict(sliding_window=None),
    "qwen2_bias": dict(layer_types=["full_attention"] * 3),
    "gemma2": dict(final_logit_softcapping=None, attn_logit_softcapping=None,
                   layer_types=["full_attention"] * 3),
    "phi3": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}),
    "phi3_longrope": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "partial_rotary_factor": 1.0}),
}


def _assert_close(ours, ref, mask, what):
    scale = float(np.abs(ref[mask == 1]).max())
    err = float(np.abs(ours - ref)[mask == 1].max())
    assert err < 1e-4 * scale, f"{what}: max abs diff {err:.3g} vs logits scale {scale:.3g}"


def _auto_lm(path, **overrides):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", **overrides).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_causal_lm_roundtrip(family, tmp_path):
    hf_dir, out_dir = str(tmp_path / "hf"), str(tmp_path / "ours")
    hf_model = build_hf_model(family)
    hf_model.save_pretrained(hf_dir)
    ids, mask = random_batch()
    ref = hf_logits(hf_model, ids, mask)

    model = M.from_pretrained(hf_dir)
    assert model.config.model_type == hf_model.config.model_type
    ours = np.asarray(model(jnp.asarray(ids), segment_ids=jnp.asarray(mask)))
    assert ours.shape == ref.shape and ours.dtype == np.float32
    _assert_close(ours, ref, mask, f"{family} import")

    M.save_pretrained(model, out_dir)
    _assert_close(hf_logits(_auto_lm(out_dir), ids, mask), ref, mask, f"{family} export")

    if family in FEATURE_OFF:
        off = hf_logits(_auto_lm(hf_dir, **FEATURE_OFF[family]), ids, mask)
        scale = np.abs(ref[mask == 1]).max()
        assert np.abs(off - ref)[mask == 1].max() > 1e-2 * scale, f"{family}: feature does not affect this input"


def test_longrope_short_factor_below_original_length(tmp_path):
    """Phi-3 longrope switches factor sets at original_max_position_embeddings (8)."""
    hf_model = build_hf_model("phi3_longrope")
    hf_model.save_pretrained(str(tmp_path))
    ids, mask = random_batch(seq=6, pad_last=2)
    ref = hf_logits(hf_model, ids, mask)
    model = M.from_pretrained(str(tmp_path))
    _assert_close(np.asarray(model(jnp.asarray(ids), segment_ids=jnp.asarray(mask))), ref, mask, "short factors")


def test_bfloat16_checkpoint_and_sharded_index(tmp_path):
    """bf16 tensors (no numpy dtype) load exactly; sharded checkpoints load and save."""
    import torch

    hf_model = build_hf_model("qwen2_bias").to(torch.bfloat16)
    src = str(tmp_path / "bf16_sharded")
    hf_model.save_pretrained(src, max_shard_size="40KB")
    assert os.path.isfile(os.path.join(src, "model.safetensors.index.json"))

    model = M.from_pretrained(src, dtype="bfloat16")
    assert model.config.param_dtype == "bfloat16"
    got = np.asarray(model.layers.attn.q_proj.kernel[...][1]).astype(np.float32)  # [D, H, Dh]
    want = hf_model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()  # [H*Dh, D]
    np.testing.assert_array_equal(got.reshape(got.shape[0], -1).T, want)
    bias = np.asarray(model.layers.attn.k_proj.bias[...][0]).astype(np.float32).reshape(-1)
    np.testing.assert_array_equal(bias, hf_model.model.layers[0].self_attn.k_proj.bias.detach().float().numpy())

    out = str(tmp_path / "ours_sharded")
    M.save_pretrained(model, out, max_shard_size="30KB")
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    assert len(set(index["weight_map"].values())) > 1
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["dtype"] == "bfloat16"
    reloaded = _auto_lm(out)
    for (name, a), (name_b, b) in zip(sorted(hf_model.state_dict().items()), sorted(reloaded.state_dict().items())):
        assert name == name_b and a.dtype == b.dtype == torch.bfloat16
        assert torch.equal(a, b), name


def test_sequence_classification_parity(tmp_path):
    """A reward-model checkpoint: the score at the last non-pad token matches HF's, both ways."""
    import torch
    import transformers

    hf_model = build_hf_model("llama_untied_bias", head="seq_cls", num_labels=1, pad_token_id=0)
    hf_dir, out_dir = str(tmp_path / "hf"), str(tmp_path / "ours")
    hf_model.save_pretrained(hf_dir)
    ids, mask = random_batch(seed=3, batch=3, pad_last=5)  # real ids >= 3, pad id 0
    with torch.no_grad():
        ref = hf_model(input_ids=torch.as_tensor(ids).long(), attention_mask=torch.as_tensor(mask).long()).logits
    ref = ref.float().numpy()[:, 0]

    model = M.from_pretrained(hf_dir)
    assert model.config.num_labels == 1 and model.lm_head is None
    ours = np.asarray(M.sequence_scores(model, jnp.asarray(ids), jnp.asarray(mask)))
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)

    M.save_pretrained(model, out_dir)
    with open(os.path.join(out_dir, "config.json")) as f:
        assert json.load(f)["architectures"] == ["LlamaForSequenceClassification"]
    back = transformers.AutoModelForSequenceClassification.from_pretrained(out_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        again = back(input_ids=torch.as_tensor(ids).long(), attention_mask=torch.as_tensor(mask).long()).logits
    np.testing.assert_allclose(again.float().numpy()[:, 0], ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
