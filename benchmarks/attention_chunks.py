"""Attention alone, forward + backward: the whole row against query chunks (``ModelConfig.attn_query_chunk``).

Three ways to compute the same masked GQA softmax attention of packed rows (random segments, a padded
tail), each jitted as ``jax.value_and_grad`` of ``sum(sin(attention(q, k, v)))`` with respect to q, k and v:

- ``whole``: :func:`lnpo.models.attention_kernels.dot_product_attention` over the whole row;
- ``causal``: :func:`~lnpo.models.attention_kernels.causal_chunked_attention` (contiguous chunks, each
  against the keys up to its end), what the training forward runs off a context axis;
- ``strided``: ``dot_product_attention(..., query_chunk=c)`` (strided chunks over all keys), what it runs on
  a context axis.

    python benchmarks/attention_chunks.py                                  # SmolLM2's shape, chunk 128
    python benchmarks/attention_chunks.py --rows 8 --length 424 --heads 4 --kv-heads 2 --chunk 64

Prints one JSON line per way: the median of ``--repeats`` timed calls after a compile, and the loss (the
three agree to float rounding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--length", type=int, default=768)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from lnpo.models import attention_kernels as A

    B, T, H, K, D = args.rows, args.length, args.heads, args.kv_heads, args.head_dim
    rng = np.random.default_rng(args.seed)
    q, k, v = (jnp.asarray(rng.normal(size=(B, T, n, D)), jnp.float32) for n in (H, K, K))
    segments, positions = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
    for b in range(B):  # packed rows: sequences of 30 to T/2 tokens, then a padded tail of 40
        t, s = 0, 1
        while t < T - 40:
            n = int(min(rng.integers(30, T // 2), T - 40 - t))
            segments[b, t:t + n], positions[b, t:t + n] = s, np.arange(n)
            t, s = t + n, s + 1
    info = A.TokenInfo(jnp.asarray(positions), jnp.asarray(segments), None, jnp.arange(T, dtype=jnp.int32))
    scale = D ** -0.5
    ways = {
        "whole": lambda q, k, v: A.dot_product_attention(q, k, v, A.attention_mask(info, info, 0), scale=scale),
        "causal": lambda q, k, v: A.causal_chunked_attention(q, k, v, info, 0, scale=scale, chunk=args.chunk),
        "strided": lambda q, k, v: A.dot_product_attention(q, k, v, A.attention_mask(info, info, 0), scale=scale,
                                                           query_chunk=args.chunk),
    }
    for name, attend in ways.items():
        step = jax.jit(jax.value_and_grad(lambda q, k, v, f=attend: jnp.sum(jnp.sin(f(q, k, v))), argnums=(0, 1, 2)))
        loss, _ = jax.block_until_ready(step(q, k, v))
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(step(q, k, v))
            times.append(time.perf_counter() - t0)
        print(json.dumps({"way": name, "rows": B, "length": T, "heads": H, "kv_heads": K, "head_dim": D,
                          "chunk": args.chunk if name != "whole" else 0,
                          "forward_backward_ms": round(1e3 * statistics.median(times), 1),
                          "loss": round(float(loss), 4)}), flush=True)


if __name__ == "__main__":
    main()
