"""Helpers: tiny GGUF files written with the ``gguf`` package, the way llama.cpp's converter writes them.

:func:`write_llama_gguf` stores a tiny transformers ``LlamaForCausalLM`` under llama.cpp's tensor names
with llama.cpp's q/k row permutation (``convert_hf_to_gguf.py``'s ``LlamaModel.permute``), a byte-level
BPE vocabulary and a ChatML template, so converting it back is checked against the model it came from.
"""

from __future__ import annotations

import numpy as np

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|eot|>"]
# GPT-2 byte-level symbols of the text the tests use: letters, "Ġ" (space), "Ċ" (newline).
SYMBOLS = list("abcdefghijklmnopqrstuvwxyz") + ["Ġ", "Ċ"]
MERGES = ["Ġ a", "Ġ t", "h e", "Ġt he"]
VOCAB = SPECIALS + SYMBOLS + [m.replace(" ", "") for m in MERGES]


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for q/k projections (rotary halves interleaved per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_llama(seed: int = 0, *, tie: bool = True):
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tie,
                                   initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def write_gguf(path: str, arch: str, tensors: dict, metadata=None) -> None:
    """A GGUF file of ``arch`` holding ``tensors`` ({name: array, or (raw bytes array, GGML type)})."""
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch=arch)
    if metadata is not None:
        metadata(writer)
    for name, value in tensors.items():
        if isinstance(value, tuple):
            writer.add_tensor(name, value[0], raw_dtype=value[1])
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_llama_gguf(path: str, model, *, eot: bool = True, chat_template: str | None = CHATML) -> None:
    """``model`` (a tiny LlamaForCausalLM) as llama.cpp would write it, in float32."""
    from gguf import TokenType

    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not c.tie_word_embeddings:
        tensors["output.weight"] = sd["lm_head.weight"]
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(c.num_hidden_layers):
        for hf, ours in names.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            if ours == "attn_q":
                w = llama_permute(w, c.num_attention_heads)
            elif ours == "attn_k":
                w = llama_permute(w, c.num_key_value_heads)
            tensors[f"blk.{i}.{ours}.weight"] = np.ascontiguousarray(w)

    def metadata(w):
        w.add_name("tiny llama")
        w.add_block_count(c.num_hidden_layers)
        w.add_context_length(c.max_position_embeddings)
        w.add_embedding_length(c.hidden_size)
        w.add_feed_forward_length(c.intermediate_size)
        w.add_head_count(c.num_attention_heads)
        w.add_head_count_kv(c.num_key_value_heads)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_vocab_size(c.vocab_size)
        w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(VOCAB)
        w.add_token_types([TokenType.CONTROL] * len(SPECIALS) + [TokenType.NORMAL] * (len(VOCAB) - len(SPECIALS)))
        w.add_token_merges(MERGES)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_pad_token_id(2)
        w.add_add_bos_token(False)
        if eot:
            w.add_eot_token_id(3)
        if chat_template is not None:
            w.add_chat_template(chat_template)

    write_gguf(path, "llama", tensors, metadata)
