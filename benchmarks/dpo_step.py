"""DPO train-step throughput, peak memory and MFU: lnpo (JAX) vs TRL's DPOTrainer (PyTorch).

Each implementation runs in its own subprocess (clean peak RSS): ``--impl lnpo``
in this interpreter, ``--impl trl`` in ``--trl-python`` (default
``/work/venv-bench/bin/python`` when it exists: a separate venv holding
``torch==2.13.0`` and ``trl``, see docs/performance.md). ``--impl both`` runs
both and adds a ratio line.

    python benchmarks/dpo_step.py --impl both                                   # reference CPU workload
    python benchmarks/dpo_step.py --impl all --trl-mode best --trl-gradient-checkpointing off \
        --reference cache --layout shared_prompt --remat dots                   # vs TRL's fastest mode
    python benchmarks/dpo_step.py --impl lnpo --lengths long-tailed --layout packed
    python benchmarks/dpo_step.py --impl both --model DIR --lengths long-tailed --prompt-len 256 \
        --response-len 512 --reference cache --layout packed --remat dots --trl-gradient-checkpointing on
    python benchmarks/dpo_step.py --impl lnpo --hidden 1024 --layers 8 --heads 8 --kv-heads 8 \
        --batch 4 --prompt-len 64 --response-len 64 --reference cache

Both sides get the same model (``--model DIR``: a Hugging Face directory's weights and tokenizer, the pairs
drawn as ``word_token_ids`` says; else a random model of the same shape: Llama: RMSNorm, RoPE, GQA, SwiGLU MLP,
untied LM head), the same random token pairs (numpy seed) and the same optimizer
settings (AdamW lr 1e-6, no weight decay, global-norm clip 1.0, linear decay:
TRL's DPOConfig defaults), DPO sigmoid loss with beta 0.1, and by default the same
compute dtype (``--dtype``, passed to TRL as ``bf16=True/False``) and the same kind
of reference (``--reference``: in-step, or computed before training = TRL's
``precompute_ref_log_probs``). TRL's line reads its effective settings back from the
trainer (``bf16``, ``fp16``, ``gradient_checkpointing``, ``precompute_ref_log_probs``,
``padding_free``) and the dtype its Linear layers computed in during the train steps
(``observed_compute_dtype``; the run fails if it is not the requested one).
``--trl-mode best`` runs TRL in every mode it runs here ({float32, bfloat16} x
{cache, in_step}) and reports the fastest; ``--impl torch`` is a second, minimal
PyTorch harness (a plain DPO loop on the same ``LlamaForCausalLM``) that
cross-checks TRL's step time. A ratio line is printed only between sides with the
same dtype and reference, unless ``--allow-mismatch`` (then it lists the
differences).

lnpo's step is the trainer's: built by ``lnpo.train.step_builder.build_train_step``
(the function ``lnpo.train.trainer`` calls) from the policy graphdef,
``make_optimizer``'s transformation and DPO's micro-batch sums: the state in its
shardings, jitted with explicit shardings on a ``(data, fsdp, tensor)`` mesh and
the state donated; batches are ``lnpo.data.layouts.layout_pairs`` rows stacked to
``[1, R, T]`` plus ``example_valid`` (and ``ref_chosen``/``ref_rejected`` with
``--reference cache``). R is set per batch as the trainer's iterator sets it:
the rows the batch needs rounded up to its row bucket
(``lnpo.data.layouts.row_buckets``; padded: always ``2 x batch``), so the step
compiles once per bucket the run's batches use (``compiles`` and ``rows`` in
the line).

lnpo compiles each of those steps once, before the timed steps
(``jitted.lower(...).compile()``; ``compile_s`` is their total) and runs the
executables; ``--release-host-memory on`` (default) returns the heap freed by the
setup and by the compile to the OS (``lnpo.train.memory``, as the trainer does),
``--compile-cache DIR`` uses JAX's persistent compilation cache (a second run of
the same command loads the step instead of compiling it) and ``--attn-chunk N``
sets ``ModelConfig.attn_query_chunk``.

Timing: each step is timed on its own (``block_until_ready`` for lnpo; TRL's
``on_step_begin``/``on_step_end`` callback); the first ``--warmup`` steps
(compilation, allocator warm-up) are excluded and the median of the rest is
reported. Printed: one JSON line per implementation with ``pairs_per_s``,
``tokens_per_s`` (real prompt+completion tokens of both sequences of each pair,
i.e. the same count for every layout and implementation), ``peak_rss_mb``
(VmHWM of the child process, ``ru_maxrss`` as a fallback) and ``mfu``: model FLOPs per second over a
dense matmul peak measured in the same process
(``lnpo.train.flops.measured_matmul_peak``, best of 20: float32 1024^3 on CPU, an
8192^3 product in the compute dtype on a GPU or TPU; for TRL the same measurement
with ``torch.matmul``), before and after the timed steps, the larger of the two (on
a shared CPU one measurement can land in a busy moment). On an accelerator the line
adds ``mfu_datasheet`` (over the vendor's bf16 peak) and ``device_peak_mb``.
``--profile DIR`` runs one more, untimed step under ``jax.profiler``.
Model FLOPs per pair = (policy forward + backward = 3x forward,
+1x forward for an in-step reference) x forward FLOPs per token at context
``prompt_len + response_len`` (``lnpo.train.flops.forward_flops_per_token``) x
the pair's real tokens: layout tricks that skip work (packing, a shared prompt)
do not inflate it, so MFU compares like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types

DEFAULT_TRL_PYTHON = "/work/venv-bench/bin/python"


# ----------------------------------------------------------------------------- shared
def _proc_status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB; None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set of this process in MiB (VmHWM; ru_maxrss as a fallback)."""
    peak = _proc_status_mib("VmHWM")
    return peak if peak is not None else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rss_mb() -> float | None:
    """Current resident set of this process in MiB (VmRSS; None where /proc is missing)."""
    return _proc_status_mib("VmRSS")


def add_model_args(ap) -> None:
    """The model-shape flags (and ``--seed``) shared by the benchmarks; defaults = the reference workload."""
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=0, help="MLP width (0: 3 x hidden)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)


def lnpo_matmul_peak(repeats: int = 20, dtype: str = "float32") -> float:
    """lnpo.train.flops.measured_matmul_peak, re-measured (its per-process cache cleared) with more repeats:
    on a shared, loaded CPU one short best-of-5 can land in a busy moment and understate the peak.

    CPU: a float32 1024 x 1024 product (the CPU has no faster dtype). GPU / TPU: an 8192 x 8192
    product in ``dtype`` (the compute dtype: bf16 runs on the matrix units), large enough to fill the chip."""
    import jax

    from lnpo.train import flops

    flops._MEASURED.clear()
    if jax.devices()[0].platform == "cpu":
        return flops.measured_matmul_peak(repeats=repeats)
    return flops.measured_matmul_peak(n=8192, repeats=repeats, dtype=dtype)


def word_token_ids(model_dir: str) -> tuple[list[int], int]:
    """``(ids, eos_id)`` of ``model_dir``'s tokenizer: every token that is a space followed by ASCII letters
    (byte-level BPE ``Ġword``) and that the tokenizer encodes back to itself alone. Text made of such tokens
    re-tokenizes to exactly the same ids (the pre-tokenizer splits before each space), so TRL, which tokenizes
    text, and lnpo, which gets the ids, see the same sequences; SmolLM2's vocabulary has 31,586 of them."""
    import re

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    cand = sorted(i for s, i in tok.get_vocab().items() if re.fullmatch("\u0120[A-Za-z]+", s))
    encoded = tok([tok.decode([i]) for i in cand], add_special_tokens=True)["input_ids"]
    ids = [i for i, e in zip(cand, encoded) if e == [i]]
    if len(ids) < 16 or tok.eos_token_id is None:
        raise SystemExit(f"dpo_step: {model_dir}'s tokenizer has {len(ids)} whole-word tokens and eos "
                         f"{tok.eos_token!r}; --model needs a byte-level BPE tokenizer with an eos token")
    return ids, tok.eos_token_id


def make_pairs(args, n: int, first_id: int = 3) -> list[dict]:
    """``n`` random token pairs (numpy only, so both implementations see the same data).

    ``--lengths fixed``: every prompt ``prompt_len`` tokens, every completion
    ``response_len``. ``long-tailed``: lognormal lengths (HH-RLHF-like: medians
    about a quarter of the prompt maximum and a third of the response maximum,
    sigma 1.0 / 0.8), clipped to ``[2, max]``. Token ids are drawn from
    ``[first_id, vocab)`` (0-2: pad / bos / eos). With ``--model DIR`` they are drawn from the real
    tokenizer's whole-word tokens (``word_token_ids``) and each completion ends with the tokenizer's eos (what
    TRL appends to a completion), so the ids are exactly those TRL gets by tokenizing the text.
    """
    import numpy as np

    rng = np.random.default_rng(args.seed)
    if args.lengths == "fixed":
        p = np.full(n, args.prompt_len)
        c = np.full(n, args.response_len)
        r = np.full(n, args.response_len)
    else:
        p = np.clip(np.round(rng.lognormal(np.log(args.prompt_len / 4), 1.0, n)), 2, args.prompt_len)
        c = np.clip(np.round(rng.lognormal(np.log(args.response_len / 3), 0.8, n)), 2, args.response_len)
        r = np.clip(np.round(rng.lognormal(np.log(args.response_len / 3), 0.8, n)), 2, args.response_len)
    if getattr(args, "model", ""):
        words, eos = word_token_ids(args.model)
        words = np.asarray(words)
        tok = lambda k: words[rng.integers(0, len(words), size=int(k))].tolist()  # noqa: E731
        end = lambda ids: ids[:-1] + [eos]  # noqa: E731
        return [{"prompt_ids": tok(p[i]), "chosen_ids": end(tok(c[i])), "rejected_ids": end(tok(r[i]))}
                for i in range(n)]
    tok = lambda k: rng.integers(first_id, args.vocab, size=int(k)).tolist()  # noqa: E731
    return [{"prompt_ids": tok(p[i]), "chosen_ids": tok(c[i]), "rejected_ids": tok(r[i])} for i in range(n)]


def pair_tokens(pairs) -> int:
    return sum(2 * len(x["prompt_ids"]) + len(x["chosen_ids"]) + len(x["rejected_ids"]) for x in pairs)


def intermediate(args) -> int:
    return args.intermediate or 3 * args.hidden


def apply_model_dir(args) -> None:
    """``--model DIR``: the shape flags (``--hidden``, ``--layers``, ...) become ``DIR/config.json``'s, so every
    line and the FLOP count describe the real model."""
    if not getattr(args, "model", ""):
        return
    cfg = lnpo_model_config(args)
    args.hidden, args.intermediate, args.layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    args.heads, args.kv_heads, args.vocab = cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size


def lnpo_model_config(args, **extra):
    """The benchmark's ModelConfig: ``--model DIR``'s config.json (``extra`` as overrides), else the shape flags."""
    from lnpo.models import ModelConfig

    if getattr(args, "model", ""):
        from lnpo.models.hf import read_config

        return ModelConfig.from_hf(read_config(args.model), **extra)
    return ModelConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=intermediate(args),
        num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads, tie_embeddings=False,
        max_position_embeddings=max(4096, 2 * (args.prompt_len + 2 * args.response_len)), rms_norm_eps=1e-6,
        rope_theta=10000.0, model_type="llama", bos_token_id=1, eos_token_id=2, pad_token_id=0, **extra)


def model_flops_per_pair_token(args, in_step_reference: bool) -> float:
    from lnpo.train.flops import forward_flops_per_token

    cfg = lnpo_model_config(args)
    return forward_flops_per_token(cfg, args.prompt_len + args.response_len) * (3 + int(in_step_reference))


def summarize(args, impl: str, step_times: list[float], pairs_per_step: float, tokens_per_step: float,
              flops_per_token: float, peak_flops: float, extra: dict) -> dict:
    timed = step_times[args.warmup:]
    med = statistics.median(timed)
    tokens_per_s = tokens_per_step / med
    return {
        "impl": impl, "model": getattr(args, "model", "") or None, "hidden": args.hidden, "layers": args.layers,
        "heads": args.heads, "kv_heads": args.kv_heads,
        "intermediate": intermediate(args), "vocab": args.vocab, "batch": args.batch, "prompt_len": args.prompt_len,
        "response_len": args.response_len, "lengths": args.lengths, "steps_timed": len(timed),
        "step_s_median": round(med, 4), "step_s_min": round(min(timed), 4), "step_s_max": round(max(timed), 4),
        "pairs_per_s": round(pairs_per_step / med, 3), "tokens_per_s": round(tokens_per_s, 1),
        "peak_rss_mb": peak_rss_mb(), "mfu": round(tokens_per_s * flops_per_token / peak_flops, 4),
        "matmul_peak_gflops": round(peak_flops / 1e9, 1), "threads": os.cpu_count(), **extra,
    }


# ----------------------------------------------------------------------------- lnpo
#: The benchmark's optimizer settings (``config.optim``'s fields): what ``lnpo_step`` hands the trainer's builder.
OPTIM = types.SimpleNamespace(lr=1e-6, warmup_steps=0, schedule="linear", clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-8,
                              weight_decay=0.0)
DPO_HPARAMS = {"beta": 0.1}


def lnpo_model(args, mesh):
    """``(graphdef, params)``: as trainer.build_model builds a fresh model (created in its shardings), or
    ``--model DIR``'s weights loaded as the trainer loads ``model.path``."""
    import jax
    from flax import nnx

    from lnpo.models import from_pretrained, init_sharded

    if args.model:
        model = from_pretrained(args.model, dtype="float32", compute_dtype=args.dtype, mesh=mesh, remat=args.remat,
                                attn_query_chunk=args.attn_chunk, attn_implementation=args.attn_impl)
    else:
        cfg = lnpo_model_config(args, param_dtype="float32", compute_dtype=args.dtype, remat=args.remat,
                                attn_query_chunk=args.attn_chunk, attn_implementation=args.attn_impl)
        model = init_sharded(cfg, args.seed, mesh)
    if getattr(args, "lora_rank", 0):  # the trainer's LoRA (train.trainer.add_lora): adapters on every projection
        from lnpo.models import lora

        lora.add_adapters(model, lora.LoraSpec(rank=args.lora_rank, alpha=2.0 * args.lora_rank),
                          jax.random.key(args.seed), mesh=mesh)
        graphdef, adapters, frozen = lora.split(model)
        args._lora_frozen = frozen  # the frozen base: lnpo_step passes it to the step (never donated)
        return graphdef, adapters
    return nnx.split(model, nnx.Param)


def lnpo_step(args, params, graphdef, mesh, *, total_steps: int, seq_len: int):
    """``(built step, ref_params)``: DPO's step from the trainer's own builder
    (:func:`lnpo.train.step_builder.build_stage_step`: the state in its shardings, jit with in/out shardings,
    the state donated); the reference an in-step frozen copy (``--reference in_step``) or cached log-probs in
    the batch (``ref_params`` None)."""
    import jax.numpy as jnp

    from lnpo import losses as losses_lib
    from lnpo.train import steps as steps_lib
    from lnpo.train.step_builder import build_stage_step

    ref_params = ref_graphdef = None
    frozen = getattr(args, "_lora_frozen", None)
    if frozen is not None and args.reference == "in_step":  # LoRA: the base with the adapters off, no copy
        from lnpo.models import lora

        ref_graphdef = lora.base_graphdef(graphdef, params, frozen)
    elif args.reference == "in_step":
        ref_graphdef, ref_params = graphdef, steps_lib.reference_copy(params, jnp.float32)
    chunk = args.logprob_chunk if args.logprob_chunk > 0 else 0
    objective = losses_lib.get("dpo")
    built = build_stage_step(params, graphdef, mesh, stage="po", optim=OPTIM, total_steps=max(total_steps, 1),
                             learning_rate=OPTIM.lr, num_pairs=args.batch, chunk_size=chunk or seq_len,
                             objective=objective, loss_hparams=losses_lib.validate("dpo", DPO_HPARAMS),
                             ref_params=ref_params, ref_graphdef=ref_graphdef, frozen=frozen,
                             sums_fn=_naive_sums_fn(objective, args.batch) if chunk == 0 else None)
    return built, ref_params


def run_lnpo(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding

    from lnpo import parallel
    from lnpo.data.layouts import bucket_rows, layout_pairs, plan_rows, round_up, row_buckets, unit_lengths
    from lnpo.train import steps as steps_lib
    from lnpo.train.memory import release_freed_host_memory

    if args.data_stack == "on":  # what the trainer's process also holds: datasets, pyarrow, pandas
        import lnpo.data.sources  # noqa: F401
    if args.compile_cache:  # a persistent XLA cache: a warm second run loads the executable instead of compiling
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    peak_before = lnpo_matmul_peak(dtype=args.dtype)
    total_steps = args.warmup + args.steps + (1 if args.profile else 0)
    pairs = make_pairs(args, args.batch * total_steps)
    batches = [pairs[i * args.batch:(i + 1) * args.batch] for i in range(total_steps)]

    max_len = args.prompt_len + args.response_len
    seq_len = args.seq_len or max_len
    if args.layout == "shared_prompt" and not args.seq_len:  # the longest unit (P + Cc + Cr + 1), up to 8s
        seq_len = round_up(max(len(x["prompt_ids"]) + len(x["chosen_ids"]) + len(x["rejected_ids"]) + 1
                               for x in pairs), 8)
    # R per batch as the trainer's iterator sets it: the rows the batch needs, up to its row bucket
    units = args.batch * (1 if args.layout == "shared_prompt" else 2)
    buckets = (units,) if args.layout == "padded" else row_buckets(units)
    batch_rows = []
    for b in batches:
        lengths = unit_lengths([len(x["prompt_ids"]) for x in b],
                               ([len(x["chosen_ids"]) for x in b], [len(x["rejected_ids"]) for x in b]), args.layout)
        batch_rows.append(bucket_rows(plan_rows(lengths, seq_len, args.layout).num_rows, buckets))

    mesh = parallel.make_mesh((-1, 1, 1))
    graphdef, params = lnpo_model(args, mesh)
    everything = jax.tree.leaves(params) + jax.tree.leaves(getattr(args, "_lora_frozen", None))  # LoRA: + base
    n_params = int(sum(x.size for x in everything))
    init_norm = float(jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in everything)))
    built, ref_params = lnpo_step(args, params, graphdef, mesh, total_steps=total_steps, seq_len=seq_len)
    state, jitted, step_hparams = built.state, built.jitted, built.hparams

    rng = np.random.default_rng(args.seed + 1)
    host_batches = []
    for b, num_rows in zip(batches, batch_rows):
        rows = layout_pairs(b, args.layout, seq_len, num_rows=num_rows)
        local = {k: v[None] for k, v in rows.items()}
        local["example_valid"] = np.ones((1, args.batch), np.float32)
        if args.reference == "cache":  # precomputed once per dataset in the trainer; not part of the step
            local["ref_chosen"] = rng.normal(-300, 10, (1, args.batch)).astype(np.float32)
            local["ref_rejected"] = rng.normal(-300, 10, (1, args.batch)).astype(np.float32)
        host_batches.append(local)

    sharding = NamedSharding(mesh, steps_lib.BATCH_SPEC)
    if args.release_host_memory == "on":  # the setup's jits (init, optimizer init, matmul peak) left freed heap
        release_freed_host_memory()
    rss_before_compile = rss_mb()
    t0 = time.perf_counter()
    # One compile per row bucket the batches use, all before the steps: the AOT executables run the steps
    # (calling ``jitted`` would compile a second time).
    executables = {}
    for local in host_batches:
        r = local["input_ids"].shape[1]
        if r not in executables:
            executables[r] = jitted.lower(state, jax.device_put(local, sharding), ref_params, step_hparams).compile()
    compile_s = time.perf_counter() - t0
    compiled = executables[max(executables)]
    rss_after_compile = peak_rss_mb()
    rss_now_after_compile = rss_mb()
    if args.release_host_memory == "on":
        release_freed_host_memory()
    rss_before_steps = rss_mb()
    mem = compiled.memory_analysis()
    xla_mb = xla_temp_mb = None
    if mem is not None:
        xla_temp_mb = round(mem.temp_size_in_bytes / 2**20, 1)
        xla_mb = round((mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes) / 2**20, 1)

    times = []
    for i, local in enumerate(host_batches):
        profile = args.profile and i == len(host_batches) - 1
        if profile:  # the last step under JAX's profiler (not used for the timing)
            jax.profiler.start_trace(args.profile, create_perfetto_trace=True)
        t = time.perf_counter()
        batch = jax.device_put(local, sharding)
        frozen = getattr(args, "_lora_frozen", None)  # LoRA's base: an argument of the compiled step
        state, metrics = executables[local["input_ids"].shape[1]](state, batch, ref_params, step_hparams,
                                                                  *([] if frozen is None else [frozen]))
        jax.block_until_ready(metrics)
        if profile:
            jax.profiler.stop_trace()
            continue
        times.append(time.perf_counter() - t)
        if len(times) == 1:
            first_loss = float(metrics["loss"])
    assert float(metrics["finite"]) == 1.0, metrics
    peak_after = lnpo_matmul_peak(dtype=args.dtype)
    peak = max(peak_before, peak_after)

    timed_batches = batches[args.warmup:args.warmup + args.steps]
    tokens_per_step = pair_tokens([x for b in timed_batches for x in b]) / len(timed_batches)
    real = sum(int((h["segment_ids"] > 0).sum()) for h in host_batches)
    slots = sum(h["segment_ids"].size for h in host_batches)
    extra = {"reference": ("base" if args.lora_rank else "in_step") if args.reference == "in_step" else "cache",
             "lora_rank": args.lora_rank, "layout": args.layout, "logprob_chunk": args.logprob_chunk,
             "remat": args.remat, "attn_chunk": args.attn_chunk, "attn_impl": args.attn_impl, "dtype": args.dtype,
             "rows": sorted(executables), "compiles": len(executables), "row_buckets": list(buckets),
             "seq_len": seq_len, "positions_per_step": [int(h["segment_ids"].size) for h in host_batches],
             "row_fill": round(real / slots, 3), "params": n_params, "init_param_norm": round(init_norm, 4),
             "compile_s": round(compile_s, 1),
             "xla_peak_mb": xla_mb, "xla_temp_mb": xla_temp_mb, "peak_rss_after_compile_mb": rss_after_compile,
             "rss_before_compile_mb": rss_before_compile, "rss_after_compile_mb": rss_now_after_compile,
             "rss_before_steps_mb": rss_before_steps, "release_host_memory": args.release_host_memory,
             "data_stack": args.data_stack,
             "compile_cache": args.compile_cache or None,
             "matmul_peak_before_after_gflops": [round(peak_before / 1e9, 1), round(peak_after / 1e9, 1)],
             "first_loss": round(first_loss, 5), "loss": round(float(metrics["loss"]), 5), "jax": jax.__version__,
             "device": str(jax.devices()[0].device_kind)}
    device = jax.devices()[0]
    if device.platform != "cpu":  # the accelerator's own peak memory, and MFU against its data-sheet bf16 peak
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            extra["device_peak_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    flops_per_token = model_flops_per_pair_token(args, args.reference == "in_step")
    result = summarize(args, "lnpo", times, args.batch, tokens_per_step, flops_per_token, peak, extra)
    if device.platform != "cpu":
        from lnpo.train.flops import device_peak_flops

        datasheet = device_peak_flops(device)
        result["datasheet_peak_tflops"] = round(datasheet / 1e12, 1)
        result["mfu_datasheet"] = round(result["tokens_per_s"] * flops_per_token / datasheet, 4)
    return result


def _naive_sums_fn(objective, num_pairs):
    """DPO sums with unchunked log-probs: full ``[R, T, V]`` float32 logits then log_softmax
    (what ``--logprob-chunk 0`` measures against lnpo's chunked ``token_logps``)."""
    import jax
    import jax.numpy as jnp

    from lnpo import logprobs
    from lnpo import losses as losses_lib
    from lnpo.train import steps as steps_lib

    def seq_logps(model, mb):
        hidden = model.hidden_states(mb["input_ids"], positions=mb["positions"], segment_ids=mb["segment_ids"],
                                     branch_ids=mb["branch_ids"])
        logp = jax.nn.log_softmax(model.unembed(hidden).astype(jnp.float32), axis=-1)
        tl = jnp.take_along_axis(logp, mb["targets"][..., None], axis=-1)[..., 0]
        return logprobs.sequence_logps(tl, mb["seq_index"], 2 * num_pairs)

    def fn(model, mb, reference, hparams):
        sums, counts = seq_logps(model, mb)
        if reference is not None:
            ref = jax.lax.stop_gradient(seq_logps(reference, mb)[0])
            ref_chosen, ref_rejected = ref[0::2], ref[1::2]
        else:
            ref_chosen, ref_rejected = mb["ref_chosen"], mb["ref_rejected"]
        pair = losses_lib.PairLogps(sums[0::2], sums[1::2], ref_chosen, ref_rejected, counts[0::2], counts[1::2])
        per_pair, metrics = objective(pair, **hparams)
        return steps_lib.weighted_by_valid(per_pair, metrics, mb["example_valid"])

    return fn


# ----------------------------------------------------------------------------- TRL
def torch_matmul_peak(n: int = 1024, repeats: int = 20) -> float:
    """Dense f32 matmul FLOP/s with torch, measured like lnpo.train.flops.measured_matmul_peak."""
    import torch

    a = torch.ones((n, n), dtype=torch.float32)
    torch.matmul(a, a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, a)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def _offline_tokenizer(vocab: int):
    """A word-level PreTrainedTokenizerFast: token ``t<i>`` <-> id i; ids 0-2 are pad / bos / eos."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<pad>")


def trl_settings(args) -> dict:
    """What TRL is asked to run: ``--trl-dtype``/``--trl-reference`` (``--trl-mode best`` sets them per candidate),
    else lnpo's ``--dtype``/``--reference``, so that by default both sides run the same precision and reference.

    The dtype is passed explicitly both ways (``bf16``, ``fp16=False``): TRL 1.16's DPOConfig defaults to
    ``bf16=True`` even with ``use_cpu=True``, which runs the step under bf16 autocast (emulated on a CPU without
    native bf16 matmul). ``--reference cache`` maps to ``precompute_ref_log_probs=True`` (the reference's log-probs
    are computed once, in the trainer's constructor, not timed; lnpo's cache is likewise outside the step)."""
    dtype = args.trl_dtype or args.dtype
    reference = args.trl_reference or args.reference
    gc = {"on": True, "off": False, "default": None, "auto": args.remat != "none"}[args.trl_gradient_checkpointing]
    return {"dtype": dtype, "reference": reference, "bf16": dtype == "bfloat16", "fp16": False,
            "precompute_ref_log_probs": reference == "cache", "gradient_checkpointing": gc}


class _ComputeDtypeProbe:
    """Forward hooks on every ``nn.Linear`` of a torch model that record the dtypes of their outputs while the
    model is in training mode: the precision the train step actually computes in (autocast included)."""

    def __init__(self, model):
        import torch

        self.dtypes: set[str] = set()
        self.positions: list[int] = []  # B x L of every training forward (the padded batch TRL computes)
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, torch.nn.Linear)]
        self.handles.append(model.get_input_embeddings().register_forward_hook(self._positions_hook))

    def _hook(self, module, inputs, output):
        if module.training:
            self.dtypes.add(str(output.dtype).removeprefix("torch."))

    def _positions_hook(self, module, inputs, output):
        if module.training:
            self.positions.append(int(inputs[0].numel()))

    def remove(self):
        for h in self.handles:
            h.remove()


def run_trl(args, callbacks=()) -> dict:
    """TRL's DPOTrainer on the benchmark's pairs; ``callbacks``: extra ``TrainerCallback`` s (tests use them to
    observe the step from outside). The JSON line reads TRL's effective settings back from ``trainer.args`` and
    the trainer (``padding_free`` is the trainer's own flag: TRL 1.16 turns a requested True back to False), and
    ``observed_compute_dtype`` (the dtype of the Linear outputs in the training forward); the run fails if that
    is not the requested dtype."""
    import copy
    import tempfile

    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    want = trl_settings(args)
    if args.layout != "padded" or args.logprob_chunk != 128:
        print("dpo_step: TRL pads each batch to its longest pair; --layout/--logprob-chunk are lnpo-only",
              file=sys.stderr)
    torch.manual_seed(args.seed)
    peak_before = torch_matmul_peak()
    total_steps = args.warmup + args.steps
    pairs = make_pairs(args, args.batch * total_steps)
    # TRL appends eos to each completion: give it the completion minus its last token, so the
    # tokenized lengths equal lnpo's (prompt P, completions C each).
    text = lambda ids: " ".join(f"t{i}" for i in ids)  # noqa: E731
    rows = {"prompt": [text(x["prompt_ids"]) for x in pairs],
            "chosen": [" " + text(x["chosen_ids"][:-1]) for x in pairs],
            "rejected": [" " + text(x["rejected_ids"][:-1]) for x in pairs]}
    if args.model:  # the real tokenizer decodes the ids to text; TRL tokenizes it back (checked below)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        text = lambda ids: tokenizer.decode(ids)  # noqa: E731
        rows = {"prompt": [text(x["prompt_ids"]) for x in pairs], "chosen": [text(x["chosen_ids"]) for x in pairs],
                "rejected": [text(x["rejected_ids"]) for x in pairs]}
    else:
        tokenizer = _offline_tokenizer(args.vocab)
    dataset = Dataset.from_dict(rows)
    model = torch_llama(args)
    # TRL builds the reference by reloading the policy's checkpoint (with precompute_ref_log_probs: none, the
    # policy itself computes the reference before training); a random model has no checkpoint, so it gets a
    # frozen copy (the same thing: a reference with the policy's initial weights).
    ref_model = None if args.model else copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad():
        init_norm = float(torch.sqrt(sum(torch.sum(p.double() ** 2) for p in model.parameters())))

    times: list[float] = []
    abandoned = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)
            if args.trl_abandon_above and len(times) > args.warmup and times[-1] > args.trl_abandon_above:
                abandoned.append(times[-1])  # --trl-mode best: this mode is already far slower than the best
                control.should_training_stop = True

    probe = _ComputeDtypeProbe(model)
    with tempfile.TemporaryDirectory() as out:
        gc = want["gradient_checkpointing"]
        kw = {} if gc is None else {"gradient_checkpointing": gc}
        cfg = DPOConfig(output_dir=out, per_device_train_batch_size=args.batch, max_steps=total_steps,
                        learning_rate=1e-6, beta=0.1, report_to="none", use_cpu=True, save_strategy="no",
                        eval_strategy="no", logging_strategy="no", bf16=want["bf16"], fp16=want["fp16"],
                        precompute_ref_log_probs=want["precompute_ref_log_probs"],
                        max_length=args.prompt_len + args.response_len + 8, dataloader_num_workers=0,
                        seed=args.seed, disable_tqdm=True, **kw)
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=cfg, train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[Timer(), *callbacks])
        ds = trainer.train_dataset
        got = sum(2 * len(p) + len(c) + len(r)
                  for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
        if got != pair_tokens(pairs):
            raise RuntimeError(f"TRL tokenized {got} tokens, lnpo's data has {pair_tokens(pairs)}")
        if args.model and [list(ds[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")] != [
                [x[k] for x in pairs] for k in ("prompt_ids", "chosen_ids", "rejected_ids")]:
            raise RuntimeError(f"TRL tokenized {args.model}'s text to other ids than lnpo's data")
        probe.dtypes.clear()  # the precompute pass ran in eval mode; only the train steps count
        probe.positions.clear()
        trainer.train()
    probe.remove()
    ran = trainer.args
    observed = sorted(probe.dtypes)
    effective = "bfloat16" if ran.bf16 else "float16" if ran.fp16 else "float32"
    if observed != [want["dtype"]] or effective != want["dtype"]:
        raise RuntimeError(f"TRL was asked for {want['dtype']} but ran bf16={ran.bf16} fp16={ran.fp16} "
                           f"with Linear outputs in {observed}")
    peak_after = torch_matmul_peak()
    peak = max(peak_before, peak_after)
    steps_run = len(times)
    tokens_per_step = pair_tokens(pairs) / total_steps  # TRL shuffles: the per-step mean over all pairs
    extra = {"reference": "cache" if trainer.precompute_ref_logps else "in_step", "layout": "padded",
             "dtype": effective, "observed_compute_dtype": observed[0],
             "bf16": bool(ran.bf16), "fp16": bool(ran.fp16),
             "gradient_checkpointing": bool(ran.gradient_checkpointing),
             "precompute_ref_log_probs": bool(ran.precompute_ref_log_probs),
             "padding_free": bool(trainer.padding_free), "padding_free_requested": bool(ran.padding_free),
             "use_cpu": bool(ran.use_cpu), "abandoned_after_s": abandoned[0] if abandoned else None,
             "steps_run": steps_run, "positions_per_step": probe.positions,
             "params": int(sum(p.numel() for p in model.parameters())), "init_param_norm": round(init_norm, 4),
             "torch": torch.__version__,
             "trl": trl.__version__, "transformers": transformers.__version__,
             "torch_threads": torch.get_num_threads(),
             "matmul_peak_before_after_gflops": [round(peak_before / 1e9, 1), round(peak_after / 1e9, 1)]}
    return summarize(args, "trl", times, args.batch, tokens_per_step,
                     model_flops_per_pair_token(args, not trainer.precompute_ref_logps), peak, extra)


def torch_llama(args):
    """transformers' LlamaForCausalLM with the benchmark's shape (random init from ``torch.manual_seed``), or
    ``--model DIR``'s weights (float32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.model:
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=intermediate(args),
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=4096, rms_norm_eps=1e-6,
                         rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    return LlamaForCausalLM(config)


def run_torch(args) -> dict:
    """A second, minimal PyTorch harness: the same DPO step as TRL's written as a plain loop (no Trainer), to
    cross-check TRL's step time. Each step: the batch's chosen and rejected sequences (prompt + completion) right-
    padded to the longest, one ``[2B, L]`` policy forward (causal attention, no padding mask: no real token of a
    right-padded row sees a pad), float32 ``log_softmax`` of the logits gathered at the
    next tokens and summed over completion tokens; the reference the same under ``no_grad`` (``--reference
    in_step``) or given per pair (``cache``); loss ``-logsigmoid(beta ((pc - rc) - (pr - rr)))`` averaged over
    pairs; backward; global-norm clip 1.0; AdamW (lr 1e-6, betas 0.9/0.999, eps 1e-8, no weight decay) with a
    linear decay. With ``--reference cache`` the reference log-probs are the initial policy's, computed before
    the timed steps (TRL's ``precompute_ref_log_probs``). ``--dtype bfloat16`` runs the forward under CPU bf16
    autocast (as TRL's bf16=True does)."""
    import contextlib
    import copy

    import torch
    import torch.nn.functional as F

    dtype = args.trl_dtype or args.dtype
    reference = args.trl_reference or args.reference
    torch.manual_seed(args.seed)
    peak_before = torch_matmul_peak()
    total_steps = args.warmup + args.steps
    pairs = make_pairs(args, args.batch * total_steps)
    model = torch_llama(args).train()
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if reference == "in_step" else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total_steps))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" \
        else contextlib.nullcontext
    probe = _ComputeDtypeProbe(model)

    def seq_logps(m, ids, completion):
        # no attention mask: the rows are right-padded and attention is causal, so no real token sees a pad
        # (a mask sends sdpa to its slower masked path: ~1.8x the step here)
        logits = m(input_ids=ids, use_cache=False).logits[:, :-1].float()
        tok = torch.gather(F.log_softmax(logits, -1), 2, ids[:, 1:, None])[..., 0]
        return (tok * completion[:, 1:]).sum(1)

    def padded(batch):
        seqs = [(x["prompt_ids"], x["chosen_ids"]) for x in batch] + [(x["prompt_ids"], x["rejected_ids"])
                                                                        for x in batch]
        length = max(len(p) + len(c) for p, c in seqs)
        ids = torch.zeros((len(seqs), length), dtype=torch.long)
        completion = torch.zeros((len(seqs), length), dtype=torch.float32)
        for i, (p, c) in enumerate(seqs):
            ids[i, :len(p) + len(c)] = torch.tensor(p + c)
            completion[i, len(p):len(p) + len(c)] = 1.0
        return ids, completion

    batches = [padded(pairs[s * args.batch:(s + 1) * args.batch]) for s in range(total_steps)]
    cached = []
    if ref_model is None:  # --reference cache: the initial policy's log-probs, computed before the steps (as TRL)
        model.eval()
        with torch.no_grad(), autocast():
            cached = [seq_logps(model, ids, completion) for ids, completion in batches]
        model.train()
    times = []
    for s, (ids, completion) in enumerate(batches):
        if ref_model is None:
            ref = cached[s]
        t = time.perf_counter()
        if ref_model is not None:
            with torch.no_grad(), autocast():
                ref = seq_logps(ref_model, ids, completion)
        with autocast():
            logp = seq_logps(model, ids, completion)
        n = args.batch
        margin = (logp[:n] - ref[:n]) - (logp[n:] - ref[n:])
        loss = -F.logsigmoid(0.1 * margin).mean()
        if s == 0:
            first_loss = float(loss.detach())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    probe.remove()
    assert torch.isfinite(loss), loss
    peak = max(peak_before, torch_matmul_peak())
    extra = {"harness": "plain PyTorch loop (no Trainer)", "reference": reference, "layout": "padded",
             "dtype": dtype, "observed_compute_dtype": sorted(probe.dtypes), "gradient_checkpointing": False,
             "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "first_loss": round(first_loss, 6),
             "loss": round(float(loss.detach()), 5)}
    timed = [x for b in [pairs[s * args.batch:(s + 1) * args.batch] for s in range(args.warmup, total_steps)]
             for x in b]
    return summarize(args, "torch", times, args.batch, pair_tokens(timed) / args.steps,
                     model_flops_per_pair_token(args, reference == "in_step"), peak, extra)


# ----------------------------------------------------------------------------- driver
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=("lnpo", "trl", "torch", "both", "all"), default="lnpo",
                    help="both = lnpo then TRL; all = lnpo, TRL and the plain PyTorch loop (TRL's cross-check)")
    add_model_args(ap)
    ap.add_argument("--model", default="",
                    help="DIR: a Hugging Face model directory (config.json, safetensors, tokenizer): both sides "
                         "start from its weights, the shape flags are ignored, and the pairs are drawn from its "
                         "tokenizer's whole-word tokens (re-tokenized by TRL to the same ids)")
    ap.add_argument("--lora-rank", type=int, default=0,
                    help="lnpo: train rank-R LoRA adapters (alpha 2R) on every projection of the frozen base; the "
                         "in-step reference is then the base with the adapters off (0: full fine-tuning)")
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--prompt-len", type=int, default=96, help="prompt tokens (the maximum for long-tailed)")
    ap.add_argument("--response-len", type=int, default=160, help="tokens per completion (maximum for long-tailed)")
    ap.add_argument("--lengths", choices=("fixed", "long-tailed"), default="fixed")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps (compile, allocator warm-up)")
    # lnpo switches
    ap.add_argument("--reference", choices=("cache", "in_step"), default="in_step",
                    help="both sides: in_step = a frozen reference forward every step; cache = reference log-probs "
                         "computed before training (lnpo's reference cache, TRL's precompute_ref_log_probs)")
    ap.add_argument("--layout", choices=("padded", "packed", "shared_prompt"), default="padded")
    ap.add_argument("--seq-len", type=int, default=0,
                    help="row length T (0: prompt+response; shared_prompt: the longest pair's P + Cc + Cr + 1 "
                         "rounded up to 8, which a trainer run gets with data.seq_len; the trainer's default "
                         "2 x max_len leaves rows ~20%% empty and doubles the attention length on the fixed workload)")
    ap.add_argument("--logprob-chunk", type=int, default=128, help="0 = unchunked naive log_softmax")
    ap.add_argument("--attn-chunk", type=int, default=0,
                    help="lnpo: attention query positions per chunk (ModelConfig.attn_query_chunk; 0 = all at once)")
    ap.add_argument("--attn-impl", choices=("xla", "cudnn"), default="xla",
                    help="ModelConfig.attn_implementation (cudnn: flash attention on NVIDIA GPUs, bf16)")
    ap.add_argument("--remat", choices=("none", "full", "dots"), default="none")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="compute dtype of both sides (TRL: bf16=True/False, passed explicitly)")
    ap.add_argument("--release-host-memory", choices=("on", "off"), default="on",
                    help="lnpo: glibc malloc_trim before and after compiling (lnpo.train.memory), as the "
                         "trainer does after its first step")
    ap.add_argument("--data-stack", choices=("on", "off"), default="off",
                    help="lnpo: also import the data pipeline (Hugging Face datasets, pyarrow, pandas: ~90 MB) as "
                         "the trainer's process does; the step itself needs none of it")
    ap.add_argument("--profile", default="",
                    help="DIR: run one more step under jax.profiler (perfetto trace in DIR), untimed")
    ap.add_argument("--compile-cache", default="",
                    help="lnpo: JAX persistent compilation cache directory (a warm run loads instead of compiling)")
    ap.add_argument("--trl-gradient-checkpointing", choices=("auto", "on", "off", "default"), default="auto",
                    help="TRL side: auto = on iff --remat is not none; default = TRL's own default (on)")
    ap.add_argument("--trl-mode", choices=("same", "best"), default="same",
                    help="same: TRL runs --dtype and --reference; best: TRL runs each of "
                         "{float32, bfloat16} x {cache, in_step} and the fastest is reported")
    ap.add_argument("--allow-mismatch", action="store_true",
                    help="print the lnpo/TRL ratio even when the two sides' dtype or reference differ (the ratio "
                         "line then names the differences); without it such a ratio is refused")
    ap.add_argument("--trl-dtype", choices=("float32", "bfloat16"), default="", help=argparse.SUPPRESS)
    ap.add_argument("--trl-reference", choices=("cache", "in_step"), default="", help=argparse.SUPPRESS)
    ap.add_argument("--trl-abandon-above", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--trl-python", default=os.environ.get("LNPO_BENCH_TRL_PYTHON", ""),
                    help=f"interpreter with torch + trl (default {DEFAULT_TRL_PYTHON} if present)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    apply_model_dir(args)
    return args


def _without_impl(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--impl":
            skip = True
        elif not a.startswith("--impl="):
            out.append(a)
    return out


def _run_child(impl: str, argv: list[str], args) -> dict:
    python = sys.executable
    if impl in ("trl", "torch"):
        python = args.trl_python or (DEFAULT_TRL_PYTHON if os.path.exists(DEFAULT_TRL_PYTHON) else sys.executable)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    cmd = [python, os.path.abspath(__file__), *argv, "--impl", impl, "--child"]
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if out.returncode:
        raise SystemExit(f"dpo_step: {impl} child failed (exit {out.returncode}): {' '.join(cmd)}")
    return json.loads(out.stdout.strip().splitlines()[-1])


TRL_BEST_CANDIDATES = (("float32", "cache"), ("float32", "in_step"), ("bfloat16", "cache"), ("bfloat16", "in_step"))
"""``--trl-mode best``: the (dtype, reference) modes TRL 1.16 runs on a CPU. ``padding_free`` is not among them:
TRL 1.16's DPOTrainer turns it back to False ("temporarily unavailable"), which every line reads back."""

ABANDON_FACTOR = 2.0
"""``--trl-mode best``: a candidate whose first timed step is this many times the best median so far stops there."""


def run_trl_best(argv: list[str], args) -> tuple[dict, list[dict]]:
    """Every ``TRL_BEST_CANDIDATES`` mode in its own child (the same steps each); returns the fastest line (with
    ``trl_mode: best``) and all lines. A mode already ``ABANDON_FACTOR`` x slower than the best one after its
    first timed step stops early and is listed with ``abandoned_after_s``."""
    lines = []
    for dtype, reference in TRL_BEST_CANDIDATES:
        extra = ["--trl-dtype", dtype, "--trl-reference", reference]
        done = [x for x in lines if x["abandoned_after_s"] is None]
        if done:
            extra += ["--trl-abandon-above", str(ABANDON_FACTOR * min(x["step_s_median"] for x in done))]
        line = _run_child("trl", argv + extra, args)
        print(json.dumps({**line, "trl_mode": "best-candidate"}), flush=True)
        lines.append(line)
    finished = [x for x in lines if x["abandoned_after_s"] is None]
    best = min(finished, key=lambda x: x["step_s_median"])
    summary = [{k: x[k] for k in ("dtype", "reference", "gradient_checkpointing", "step_s_median", "pairs_per_s",
                                  "peak_rss_mb", "abandoned_after_s")} for x in lines]
    return {**best, "trl_mode": "best", "candidates": summary}, lines


def ratio_line(a: dict, b: dict, allow_mismatch: bool) -> dict:
    """``a / b`` for pairs/s, peak RSS and MFU, or a refusal: the ratio is printed only when both sides ran the
    same compute dtype and the same kind of reference (in-step vs computed before training), unless
    ``allow_mismatch``; then the line lists every difference under ``mismatch``."""
    mismatch = {k: [a[k], b[k]] for k in ("dtype", "reference") if a[k] != b[k]}
    line = {"ratio": f"{a['impl']}/{b['impl']}" + (" (TRL best mode)" if b.get("trl_mode") == "best" else ""),
            "settings": {k: [a[k], b[k]] for k in ("dtype", "reference", "layout")}}
    if mismatch and not allow_mismatch:
        return {**line, "refused": "the two sides ran different " + " and ".join(mismatch)
                + f" ({mismatch}); rerun with matching --dtype/--reference or pass --allow-mismatch"}
    if mismatch:
        line["mismatch"] = mismatch
    return {**line, "pairs_per_s": round(a["pairs_per_s"] / b["pairs_per_s"], 2),
            "peak_rss_mb": round(a["peak_rss_mb"] / b["peak_rss_mb"], 2), "mfu": round(a["mfu"] / b["mfu"], 2)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        result = {"lnpo": run_lnpo, "trl": run_trl, "torch": run_torch}[args.impl](args)
        result["loadavg"] = os.getloadavg()[0]
        print(json.dumps(result), flush=True)
        return
    impls = {"both": ("lnpo", "trl"), "all": ("lnpo", "trl", "torch")}.get(args.impl, (args.impl,))
    child_argv = _without_impl(argv)
    results = {}
    for impl in impls:
        if impl == "trl" and args.trl_mode == "best":
            results[impl], _ = run_trl_best(child_argv, args)
        else:
            results[impl] = _run_child(impl, child_argv, args)
        print(json.dumps(results[impl]), flush=True)
    if "lnpo" in results:
        for other in ("trl", "torch"):
            if other in results:
                print(json.dumps(ratio_line(results["lnpo"], results[other], args.allow_mismatch)), flush=True)


if __name__ == "__main__":
    main()
