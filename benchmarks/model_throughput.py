"""Forward + backward throughput and peak memory of the lnpo decoder on CPU.

Each size runs in its own subprocess (clean peak RSS). The step is the training
hot path: hidden states -> chunked token log-probs -> mean -> gradients w.r.t.
all parameters.

    python benchmarks/model_throughput.py                 # both sizes
    python benchmarks/model_throughput.py --size 2M --remat full --steps 5

Reported per size: parameter count, tokens/s over the timed steps (after one
compile + warm-up step), XLA's compiled memory estimate (arguments + outputs +
temporaries) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SIZES = {
    # ~1.8M parameters
    "2M": dict(vocab_size=1024, hidden_size=192, intermediate_size=512, num_layers=4, num_heads=4, num_kv_heads=2,
               batch=8, seq=256),
    # ~100M parameters (tied 32k vocabulary)
    "100M": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12,
                 num_kv_heads=4, batch=2, seq=256),
}


def run_one(size: str, remat: str, steps: int, chunk: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from lnpo.logprobs import token_logps
    from lnpo.models import Decoder, ModelConfig

    spec = dict(SIZES[size])
    B, T = spec.pop("batch"), spec.pop("seq")
    config = ModelConfig(tie_embeddings=True, remat=remat, **spec)
    model = Decoder(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    n_params = sum(x.size for x in jax.tree.leaves(state))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, config.vocab_size, size=(B, T)), jnp.int32)
    targets = jnp.roll(ids, -1, axis=1)

    def loss(state):
        m = nnx.merge(graphdef, state)
        return -jnp.mean(token_logps(m.hidden_states(ids), targets, m.unembed, chunk_size=chunk))

    step = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    compiled = step.lower(state).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    xla_bytes = None
    if mem is not None:
        xla_bytes = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)
    jax.block_until_ready(compiled(state))  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        out = compiled(state)
    jax.block_until_ready(out)
    dt = (time.perf_counter() - t0) / steps
    return {
        "size": size, "params": int(n_params), "batch": B, "seq": T, "remat": remat, "chunk": chunk,
        "compile_s": round(compile_s, 1), "step_s": round(dt, 3), "tokens_per_s": round(B * T / dt, 1),
        "xla_peak_mib": None if xla_bytes is None else round(xla_bytes / 2**20, 1),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES),
                    help="one size in this process (default: all, one subprocess each)")
    ap.add_argument("--remat", default="none")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=128, help="log-prob sequence chunk")
    args = ap.parse_args()
    if args.size:
        print(json.dumps(run_one(args.size, args.remat, args.steps, args.chunk)), flush=True)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows = []
    for size in SIZES:
        cmd = [sys.executable, os.path.abspath(__file__), "--size", size, "--remat", args.remat,
               "--steps", str(args.steps), "--chunk", str(args.chunk)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| size | params | batch x seq | remat | tokens/s | step s | compile s | XLA peak MiB | max RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['seq']} | {r['remat']} | "
              f"{r['tokens_per_s']} | {r['step_s']} | {r['compile_s']} | {r['xla_peak_mib']} | {r['max_rss_mib']} |")


if __name__ == "__main__":
    main()
