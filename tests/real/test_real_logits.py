"""SmolLM2-135M-Instruct: lnpo's logits equal transformers' on chat-templated English prompts.

Bounds (docs/models.md, "A real checkpoint"): float32 compute, max |logit difference| <= 1e-4 x max |logit|
(measured 3.4e-6); bfloat16 compute with float32 weights, max |difference| <= 0.06 x max |logit|, relative
Frobenius error <= 0.05 and the same top-1 token at >= 95% of positions (measured 0.033, 0.027, 100%).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from smollm2 import PROMPTS, chat_ids

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def batch_and_reference(tokenizer, hf_model):
    """Right-padded chat prompts ([B, T] ids and mask) and transformers' float32 logits on them."""
    import torch

    rows = [chat_ids(tokenizer, p) for p in PROMPTS]
    T = max(map(len, rows))
    ids = np.zeros((len(rows), T), np.int32)
    mask = np.zeros((len(rows), T), np.int32)
    for b, row in enumerate(rows):
        ids[b, :len(row)], mask[b, :len(row)] = row, 1
    with torch.no_grad():
        ref = hf_model(input_ids=torch.as_tensor(ids).long(), attention_mask=torch.as_tensor(mask).long()).logits
    return ids, mask, ref.numpy()


def test_the_prompts_are_chatml_with_the_models_system_prompt(tokenizer):
    ids = chat_ids(tokenizer, PROMPTS[0])
    text = tokenizer.decode(ids)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") == 1
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2


def test_float32_logits_equal_transformers(lnpo_model, batch_and_reference):
    ids, mask, ref = batch_and_reference
    assert lnpo_model.config.tie_embeddings and lnpo_model.config.num_layers == 30
    ours = np.asarray(lnpo_model(jnp.asarray(ids), segment_ids=jnp.asarray(mask)))
    real = mask == 1
    scale = np.abs(ref[real]).max()
    err = np.abs(ours - ref)[real].max()
    assert err <= 1e-4 * scale, f"max |diff| {err:.3g} vs logit scale {scale:.3g}"


def test_bfloat16_compute_within_the_documented_bound(smollm2_dir, batch_and_reference):
    import lnpo.models as M

    ids, mask, ref = batch_and_reference
    model = M.from_pretrained(smollm2_dir, compute_dtype="bfloat16")
    ours = np.asarray(model(jnp.asarray(ids), segment_ids=jnp.asarray(mask))).astype(np.float32)
    real = mask == 1
    diff = (ours - ref)[real]
    scale = np.abs(ref[real]).max()
    assert np.abs(diff).max() <= 0.06 * scale
    assert np.linalg.norm(diff) <= 0.05 * np.linalg.norm(ref[real])
    assert (ours.argmax(-1) == ref.argmax(-1))[real].mean() >= 0.95
    assert np.abs(diff).max() > 1e-3 * scale  # bf16 was in effect: not the float32 numbers
