"""Model FLOPs and model-FLOPs utilization (MFU).

Forward FLOPs per token of a decoder with ``P`` matmul parameters (every
weight matrix, the unembedding included, embeddings lookups excluded) at
context length ``T``:  ``2 P + 2 * layers * T * heads * head_dim`` (the second
term is causal attention: QK^T and AV, each ``2 * T * heads * head_dim`` FLOPs
per token, halved by the causal mask). Training costs 3x the forward (backward
is twice the forward); a frozen reference costs 1x.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets.
_PEAK_BF16 = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # v5p
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def matmul_params(cfg) -> int:
    """Parameters that take part in matmuls, per token (see module docstring)."""
    d, h, kv, hd, f, v, n = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                             cfg.intermediate_size, cfg.vocab_size, cfg.num_layers)
    attention = d * hd * (h + 2 * kv) + h * hd * d
    mlp = 3 * d * f
    return n * (attention + mlp) + d * v


def forward_flops_per_token(cfg, seq_len: int) -> float:
    attention = 2 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
    return 2.0 * matmul_params(cfg) + attention


_MEASURED: dict[tuple, float] = {}


def measured_matmul_peak(device=None, n: int = 1024, repeats: int = 5, dtype=jnp.float32) -> float:
    """Dense ``[n, n] @ [n, n]`` matmul FLOP/s in ``dtype`` on ``device``: the best of
    ``repeats`` timed products on random data after one warm-up (cached per device kind,
    size and dtype)."""
    device = device or jax.devices()[0]
    key = (device.device_kind, n, jnp.dtype(dtype).name)
    if key not in _MEASURED:
        a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), dtype), device)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            f(a).block_until_ready()
            best = min(best, time.perf_counter() - t)
        _MEASURED[key] = 2.0 * n**3 / best
    return _MEASURED[key]


def device_peak_flops(device=None) -> float:
    """Peak FLOP/s of one device: the data-sheet bf16 peak for known accelerators,
    otherwise (CPU, unknown chips) a dense matmul measured in this process."""
    device = device or jax.devices()[0]
    kind = device.device_kind
    for name, peak in sorted(_PEAK_BF16.items(), key=lambda kv: -len(kv[0])):
        if kind.startswith(name):
            return peak
    return measured_matmul_peak(device)
