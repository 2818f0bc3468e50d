"""Helpers: tiny random Hugging Face models (PyTorch, CPU) for the parity tests.

Every family is built from its transformers config class with hidden 32, 2-3
layers, vocab 128, initializer_range 0.1 (so soft-caps and masks matter) and
norm weights perturbed away from their 1/0 init (so norm conventions matter).
"""

from __future__ import annotations

import numpy as np

VOCAB = 128
SEQ = 12

_COMMON = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
    max_position_embeddings=64,
)

# name -> (transformers config class name, causal-LM class name, extra config kwargs)
FAMILIES = {
    "llama3_tied": ("LlamaConfig", "LlamaForCausalLM", dict(
        tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=16))),
    "llama_untied_bias": ("LlamaConfig", "LlamaForCausalLM", dict(
        tie_word_embeddings=False, attention_bias=True, mlp_bias=True, num_hidden_layers=3,
        rope_scaling=dict(rope_type="linear", factor=2.0))),
    "mistral_sliding": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=5, head_dim=16)),
    "qwen2_bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        use_sliding_window=True, sliding_window=4, max_window_layers=1, num_hidden_layers=3)),
    "qwen3_qknorm": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=8, tie_word_embeddings=True)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=8, num_key_value_heads=1)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=8, sliding_window=4, query_pre_attn_scalar=12, final_logit_softcapping=2.0,
        attn_logit_softcapping=1.0, num_hidden_layers=3)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(
        pad_token_id=0, eos_token_id=1, bos_token_id=2, partial_rotary_factor=0.5)),
    "phi3_longrope": ("Phi3Config", "Phi3ForCausalLM", dict(
        pad_token_id=0, eos_token_id=1, bos_token_id=2, max_position_embeddings=32,
        original_max_position_embeddings=8,
        rope_scaling=dict(type="longrope", short_factor=[1.0, 1.5, 2.0, 2.5], long_factor=[3.0, 4.0, 6.0, 8.0],
                          original_max_position_embeddings=8))),
}


def hf_config(family: str, **overrides):
    import transformers

    cfg_cls, _, extra = FAMILIES[family]
    kw = {**_COMMON, **extra, **overrides}
    cfg = getattr(transformers, cfg_cls)(**kw)
    cfg._attn_implementation = "eager"
    return cfg


def build_hf_model(family: str, *, seed: int = 0, head: str = "causal", **overrides):
    """A random HF model of ``family`` in eval mode (head: "causal" or "seq_cls")."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = hf_config(family, **overrides)
    cls_name = FAMILIES[family][1]
    if head == "seq_cls":
        cls_name = cls_name.replace("ForCausalLM", "ForSequenceClassification")
    model = getattr(transformers, cls_name)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                    attention_mask=torch.as_tensor(mask, dtype=torch.long))
    return out.logits.float().numpy()


def random_batch(seed: int = 0, batch: int = 2, seq: int = SEQ, pad_last: int = 4, low: int = 3):
    """Token ids [B, T] (ids >= ``low``) with the last row right-padded by ``pad_last``."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(low, VOCAB, size=(batch, seq)).astype(np.int32)
    mask = np.ones((batch, seq), np.int32)
    mask[-1, seq - pad_last:] = 0
    ids[mask == 0] = 0
    return ids, mask

