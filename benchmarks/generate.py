"""Sampling throughput: lnpo's KV-cache generation vs transformers' ``generate`` (PyTorch CPU).

Each implementation runs in its own subprocess (clean peak RSS), as in
benchmarks/dpo_step.py: ``--impl lnpo`` (``lnpo.evaluate.generate_ids``),
``--impl hf`` (``LlamaForCausalLM.generate`` with its KV cache, in
``--hf-python``, default ``/work/venv-bench/bin/python`` when present), ``--impl
both`` adds a ratio line.

    python benchmarks/generate.py --impl both
    python benchmarks/generate.py --impl lnpo --batch 16 --new-tokens 128

Same model shape (Llama, untied head, random weights), same random prompts,
same settings: sampling at temperature 1, no top-k / top-p, no EOS (every row
generates exactly ``--new-tokens``). Timing: the first ``--warmup`` calls
(compilation) are excluded; the median of ``--repeats`` calls is reported.
``tokens_per_s`` counts generated tokens; ``mfu`` = forward FLOPs of prompt +
generated tokens (``forward_flops_per_token`` at the final context) per second
over the matmul peak measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dpo_step import (  # noqa: E402
    DEFAULT_TRL_PYTHON,
    add_model_args,
    intermediate,
    lnpo_matmul_peak,
    lnpo_model_config,
    peak_rss_mb,
    torch_matmul_peak,
)


def prompts(args):
    import numpy as np

    rng = np.random.default_rng(args.seed)
    return rng.integers(3, args.vocab, size=(args.batch, args.prompt_len)).tolist()


def finish(args, impl, times, peak, extra):
    from lnpo.train.flops import forward_flops_per_token

    timed = times[args.warmup:]
    med = statistics.median(timed)
    ctx = args.prompt_len + args.new_tokens
    flops = args.batch * ctx * forward_flops_per_token(lnpo_model_config(args), ctx)
    return {"impl": impl, "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
            "kv_heads": args.kv_heads, "intermediate": intermediate(args), "vocab": args.vocab, "batch": args.batch,
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": len(timed),
            "call_s_median": round(med, 4), "tokens_per_s": round(args.batch * args.new_tokens / med, 1),
            "peak_rss_mb": peak_rss_mb(), "mfu": round(flops / med / peak, 4),
            "matmul_peak_gflops": round(peak / 1e9, 1), **extra}


def run_lnpo(args):
    import jax
    from flax import nnx

    from lnpo.evaluate.generate import generate_ids
    from lnpo.models import Decoder
    peak = lnpo_matmul_peak()
    model = Decoder(lnpo_model_config(args, compute_dtype=args.dtype), rngs=nnx.Rngs(args.seed))
    ps = prompts(args)
    times = []
    for i in range(args.warmup + args.repeats):
        t = time.perf_counter()
        out = generate_ids(model, ps, max_new_tokens=args.new_tokens, temperature=1.0, seed=i,
                           batch_size=args.batch)
        times.append(time.perf_counter() - t)
    assert all(len(o["response_ids"]) == args.new_tokens for o in out)
    peak = max(peak, lnpo_matmul_peak())
    return finish(args, "lnpo", times, peak, {"dtype": args.dtype, "jax": jax.__version__})


def run_hf(args):
    import torch
    import transformers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    peak = torch_matmul_peak()
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=intermediate(args),
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=4096, rms_norm_eps=1e-6,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.tensor(prompts(args))
    gen = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=0, use_cache=True)
    times = []
    with torch.inference_mode():
        for _ in range(args.warmup + args.repeats):
            t = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen)
            times.append(time.perf_counter() - t)
    assert out.shape[1] == args.prompt_len + args.new_tokens
    peak = max(peak, torch_matmul_peak())
    return finish(args, "hf", times, peak, {"dtype": "float32", "torch": torch.__version__,
                                            "transformers": transformers.__version__})


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=("lnpo", "hf", "both"), default="lnpo")
    add_model_args(ap)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=96)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="lnpo compute dtype")
    ap.add_argument("--hf-python", default=os.environ.get("LNPO_BENCH_TRL_PYTHON", ""))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    # the dpo_step model-config helper reads these
    ap.set_defaults(response_len=0)
    args = ap.parse_args(argv)
    args.prompt_len, args.response_len = args.prompt_len, args.new_tokens
    if args.child:
        result = run_lnpo(args) if args.impl == "lnpo" else run_hf(args)
        result["loadavg"] = os.getloadavg()[0]
        print(json.dumps(result), flush=True)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--impl":
            skip = True
        elif not a.startswith("--impl="):
            rest.append(a)
    results = {}
    for impl in (("lnpo", "hf") if args.impl == "both" else (args.impl,)):
        python = sys.executable
        if impl == "hf":
            python = args.hf_python or (DEFAULT_TRL_PYTHON if os.path.exists(DEFAULT_TRL_PYTHON) else sys.executable)
        cmd = [python, os.path.abspath(__file__), *rest, "--impl", impl, "--child"]
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        if out.returncode:
            raise SystemExit(f"generate: {impl} child failed (exit {out.returncode}): {' '.join(cmd)}")
        results[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(results[impl]), flush=True)
    if len(results) == 2:
        a, b = results["lnpo"], results["hf"]
        print(json.dumps({"ratio": "lnpo/hf", "tokens_per_s": round(a["tokens_per_s"] / b["tokens_per_s"], 2),
                          "peak_rss_mb": round(a["peak_rss_mb"] / b["peak_rss_mb"], 2)}), flush=True)


if __name__ == "__main__":
    main()
