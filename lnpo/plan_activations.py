"""The planner's activation model: peak bytes of one micro-batch's forward and backward pass
per chip, by remat policy, attention kernel and mesh (``lnpo.plan`` adds the state).

Checked in tests/test_plan.py against XLA's memory analysis of the compiled step on CPU
(einsum, query chunks, splash in Pallas' interpret mode, a context axis on simulated devices)
and against device peaks measured on an H200.
"""

from __future__ import annotations

ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


def layer_bytes_per_token(cfg, tensor: int, seq_len: int, context: int = 1) -> dict[str, float]:
    """Bytes per token of one layer's saved activations on one chip, by remat policy
    (and ``"working"``: what the layer being differentiated holds at once).

    Counted from the decoder's saved residuals (``jax.ad_checkpoint.print_saved_residuals``
    of a loss over ``Decoder.hidden_states`` + ``lnpo.logprobs.token_logps``), per token
    of one layer, ``s`` the compute dtype's bytes:

    - ``"none"``: 5 hidden-sized tensors in compute dtype and 4 in float32 (the
      RMSNorms), 6 MLP-sized, 2 of q's width and 2 of k's and v's, the float32 norm
      and softmax statistics, and the attention probabilities: with the einsum
      attention the float32 scores, the softmax in compute dtype and the boolean
      mask (``5 + s`` bytes per head and key); with ``attn_query_chunk`` only the
      boolean mask (1 byte per key: each chunk's scores are recomputed); with
      ``attn_implementation="cudnn"`` only the mask as a compute-dtype bias
      (``s`` bytes per key, one head); with ``"splash"`` no score or mask array at all,
      only the kernel's float32 log-sum-exp per head (``4 H`` bytes per token; the
      backward pass adds its float32 row statistics, ``8 H``); with ``"ring"`` on a
      context axis of ``c`` the ring's ``c`` rematerialized steps each keep their input:
      the float32 running maximum, normalizer and output (``8 H + 4 H Dh``) and the
      key block passing through (``2 K Dh s`` and 16 bytes of ids), while one block's
      scores (``S / c`` keys, about 7 float32 copies while it is differentiated) are
      live at a time;
    - ``"full"``: the layer input only;
    - ``"dots"`` / ``"minimal"``: the outputs of the weight matmuls (q, k, v, o,
      gate, up, down);
    - ``"dots_saveable"``: also the attention matmuls (float32 scores and the
      attention output) where the einsum attention writes them unchunked.

    ``"working"`` is ``"none"`` with the whole layer's scores for the einsum
    attention, one query chunk's with ``attn_query_chunk``. Heads, MLP and
    vocabulary are split over ``tensor``; the hidden size is not. A token's scores
    cover the ``seq_len`` keys of its whole row, also when the row's queries are split
    over a context axis.
    """
    s = ITEMSIZE[cfg.compute_dtype]
    D, Dh = cfg.hidden_size, cfg.head_dim
    H, K, F = cfg.num_heads / tensor, cfg.num_kv_heads / tensor, cfg.intermediate_size / tensor
    S = seq_len
    norms = 4 + (2 if cfg.post_norms else 0)
    base = s * (5 * D + 6 * F + 2 * H * Dh + 2 * K * Dh) + 4 * D * norms + 4 * (norms + 2 * H)
    scores = (5 + s) * H * S  # per token: float32 scores, the softmax and the mask, for every key
    dots = s * (2 * D + 2 * F + (H + 2 * K) * Dh)
    if cfg.attn_implementation == "cudnn":
        saved_probs, working_probs, dots_attention = s * S, s * S, 0.0
    elif cfg.attn_implementation == "splash":
        saved_probs, working_probs, dots_attention = 4.0 * H, 12.0 * H, 0.0
    elif cfg.attn_implementation == "ring" and context > 1:
        saved_probs = context * (8.0 * H + 4.0 * H * Dh + 2.0 * K * Dh * s + 16.0)
        # the block being differentiated: its scores, masked scores, exponentials, probabilities and
        # their cotangents, about 7 float32 copies per head, query and key of the block (XLA:CPU)
        # (one query chunk's share with attn_query_chunk dividing the shard's S / c positions)
        block = S / context
        if 0 < cfg.attn_query_chunk < block and block % cfg.attn_query_chunk == 0:
            block = cfg.attn_query_chunk
        working_probs, dots_attention = saved_probs + 28.0 * H * block, 0.0
    elif 0 < cfg.attn_query_chunk < S:
        saved_probs, working_probs, dots_attention = 1.0 * S, scores * cfg.attn_query_chunk / S, 0.0
    else:
        saved_probs, working_probs, dots_attention = scores, scores, s * H * Dh + 4 * H * S
    return {
        "none": base + saved_probs,
        "working": base + working_probs,
        "full": s * D,
        "dots": dots,
        "minimal": dots,
        "dots_with_no_batch_dims_saveable": dots,
        "dots_saveable": dots + dots_attention,
    }


def activation_bytes(cfg, *, remat: str, rows: int, seq_len: int, tensor: int, chunk: int,
                     layer_weight_elements: float = 0, context: int = 1) -> dict[str, float]:
    """Peak activation bytes of one micro-batch of ``rows`` rows (per chip), by part.

    ``context`` > 1 splits each row's positions over a context axis: a chip holds
    ``seq_len / context`` positions of its rows (hidden states, MLP, queries, their
    scores over all ``seq_len`` keys, the log-softmax chunks), plus ``gathered``: one
    layer's keys and values of the whole row (all-gathered; with remat "none" kept for
    every layer; with ring attention only two blocks of ``seq_len / context`` keys and values).

    ``saved``: what the remat policy keeps for every layer; ``working``: one
    layer's full set (the layer being recomputed and differentiated);
    ``logits``: the chunked log-softmax's float32 logits (recomputed in the
    backward pass) and their gradient; ``hidden``: the final hidden states and
    their gradient; ``casts``: with remat "none" and a compute dtype narrower
    than the parameters, autodiff also keeps every layer's weights cast to the
    compute dtype (``layer_weight_elements`` per chip per layer).
    """
    per_layer = layer_bytes_per_token(cfg, tensor, seq_len, context)
    tokens = rows * seq_len / context
    saved = cfg.num_layers * per_layer[remat] * tokens
    working = per_layer["working"] * tokens
    C = max(1, min(chunk, seq_len))
    logits = 3 * 4 * rows * C * cfg.vocab_size / tensor / context
    hidden = 2 * 4 * tokens * cfg.hidden_size
    gathered = 0.0
    if context > 1:  # k and v of the whole row, compute dtype, this chip's kv heads
        one = 2 * rows * seq_len * (cfg.num_kv_heads / tensor) * cfg.head_dim * ITEMSIZE[cfg.compute_dtype]
        if cfg.attn_implementation == "ring":  # no whole row: the block attended and the one arriving
            gathered = 2 * one / context
        else:
            gathered = one * (cfg.num_layers + 1 if remat == "none" else 1)
    casts = 0.0
    if remat == "none" and cfg.compute_dtype != cfg.param_dtype:
        casts = cfg.num_layers * layer_weight_elements * ITEMSIZE[cfg.compute_dtype]
    parts = {"saved": saved, "working": working, "logits": logits, "hidden": hidden, "casts": casts,
             "gathered": gathered}
    parts["total"] = sum(parts.values())
    return parts
