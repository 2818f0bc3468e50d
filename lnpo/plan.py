"""Memory and step-time planner: will this config fit on this slice, and how fast will it run?

    python -m lnpo.plan --config=configs/lndpo.py --chips=64 --chip-type=v5p \\
        --config.model.path=/ckpt/llama-8b-sft --config.mesh.shape='(1,-1,1)'

prints, per chip: parameters, AdamW state, the frozen reference, gradients,
activations (under ``model.remat``), FSDP weight gathers and the batch, the
total against the chip's HBM, and the step time from the FLOP count at a stated
MFU. When the config does not fit it names the knobs that help (more fsdp, remat
full, reference cache, bf16 reference, more micro-batches) and what each one
gives. Nothing is compiled and no weights are read: the model comes from
``config.model.path``'s ``config.json`` (or the embedded tiny model).

Python API: :func:`plan(config, chips=..., hbm_gib=...) <plan>` returns the same
numbers as a dict (bytes per chip under ``"bytes"``).

What the numbers are:

- parameters, optimizer, reference, gradients: exact per-chip sizes of the
  arrays the trainer holds (``lnpo.plan_state``), from the model's real parameter shapes and logical
  axes (``lnpo.parallel`` rules) on the configured mesh: each dimension split
  over its mesh axes. The parameters are the float32 master weights
  (``model.param_dtype``); AdamW's two moments have the parameters' dtype
  (optax), plus its step counters; the in-step reference is a copy of the
  parameters in ``reference.dtype`` sharded like the policy; the cached
  reference holds no parameters during training (a few bytes per pair).
- activations: an estimate of the peak of one micro-batch's forward and
  backward pass: the layer residuals the remat policy saves for every layer
  (counted from the decoder's saved residuals, see ``lnpo.plan_activations``),
  plus one layer's full set (the layer being recomputed and differentiated),
  plus the chunked log-softmax's logits; the attention scores as the model's
  ``attn_implementation`` and ``attn_query_chunk`` hold them. Checked in
  tests/test_plan.py against XLA's memory analysis of the compiled step on CPU
  (within 0.5x-2x) and against the device peaks of the 1.1B benchmark runs measured
  on one H200 (within 15%).
- FSDP weight gathers: with ``fsdp > 1`` each layer's weights are all-gathered
  just in time (two layers in flight and one layer's unsharded gradient): an
  estimate.
- step time: ``tokens * forward_flops_per_token * (3 + 1 for an in-step
  reference)`` (lnpo.train.flops) over ``chips * peak * mfu``. Tokens are the
  padded rows the step computes on.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
from typing import Any

from lnpo.errors import ConfigError
from lnpo.implied import EMBEDDED_VOCAB, data_parallel, model_config, reference_mode, row_length
from lnpo.plan_activations import ITEMSIZE, activation_bytes
from lnpo.plan_state import lora_infos, optimizer_bytes, param_infos, per_chip_param_elements
from lnpo.train import stages

GIB = 1024**3

# Dense bf16 peak FLOP/s and HBM per chip (vendor data sheets).
CHIPS: dict[str, tuple[float, float]] = {
    "v4": (275e12, 32.0),
    "v5e": (197e12, 16.0),
    "v5p": (459e12, 95.0),
    "v6e": (918e12, 32.0),
    "h100": (989e12, 80.0),
    "h200": (989e12, 141.0),
    "a100": (312e12, 80.0),
}
USABLE_FRACTION = 0.9  # of HBM: XLA's runtime, fragmentation and the unplanned rest


# ----------------------------------------------------------------------------- inputs
def rows_per_micro_batch(config, items: int) -> int:
    """Rows of one micro-batch of ``items`` pairs (examples): exact for "padded", an upper bound otherwise."""
    if stages.get(config.stage).examples == "sft" or config.data.layout == "shared_prompt":
        return items
    return 2 * items


# ----------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class Settings:
    """The knobs the planner varies when suggesting changes."""

    mesh: tuple[int, int, int, int]  # (data, fsdp, tensor, context)
    micro_batches: int
    remat: str
    reference: str  # "none" | "cache" | "in_step" | "base" (LoRA: no copy)
    reference_dtype: str


def _memory(config, cfg, infos, st: Settings, chips: int, abstract) -> dict[str, Any]:
    """Per-chip bytes by part, the problems (batch divisibility) and the parameter dimensions
    replicated over a mesh axis that does not divide them, for settings ``st``."""
    from lnpo.parallel import MESH_AXES

    mesh = dict(zip(MESH_AXES, st.mesh))
    counts, replicated = per_chip_param_elements(infos, mesh)
    problems = []
    params = sum(n * i.itemsize for n, i in zip(counts, infos))
    param_elems = sum(counts)
    lora = _lora_parts(config, cfg, mesh)
    if lora is None:
        adapters = 0
        opt = optimizer_bytes(config, abstract, infos, counts)
        trained = params
    else:  # LoRA: the frozen base in its dtype; adapters, their gradients and AdamW state in float32
        params, adapters, opt = lora["base"], lora["adapters"], lora["optimizer"]
        trained = adapters
    ref = param_elems * ITEMSIZE[st.reference_dtype] if st.reference == "in_step" else 0
    grads = trained * (2 if st.micro_batches > 1 else 1)  # accumulator (+ this micro-batch's)

    dp = data_parallel(mesh)
    G, A = int(config.train.global_batch), st.micro_batches
    if G % A:
        problems.append(f"train.global_batch {G} is not divisible by train.micro_batches {A}")
    per_micro = G // A
    if per_micro % dp:
        problems.append(f"train.global_batch / micro_batches = {per_micro} is not divisible by the "
                        f"data-parallel size {dp} (mesh data x fsdp)")
    rows = rows_per_micro_batch(config, per_micro)
    rows_chip = max(1, -(-rows // dp))
    T = row_length(config)
    layer_chip = sum(n for n, i in zip(counts, infos) if i.axes[:1] == ("layers",)) / cfg.num_layers
    if T % mesh["context"]:
        problems.append(f"the context axis {mesh['context']} does not divide the row length {T}")
    acts = activation_bytes(cfg, remat=st.remat, rows=rows_chip, seq_len=T, tensor=mesh["tensor"],
                            chunk=int(config.train.logprob_chunk), layer_weight_elements=layer_chip,
                            context=mesh["context"])

    # FSDP gathers: two layers' weights in compute dtype in flight and one layer's unsharded gradient.
    s = ITEMSIZE[cfg.compute_dtype]
    layer_elems = sum(math.prod(i.shape[1:]) for i in infos if i.axes[:1] == ("layers",))
    embed_elems = max((math.prod(i.shape) for i in infos if i.axes[:1] != ("layers",)), default=0)
    unit = max(layer_elems, embed_elems) / mesh["tensor"]
    if mesh["fsdp"] > 1:
        gathers = unit * (2 * s + infos[0].itemsize)
    elif cfg.compute_dtype != cfg.param_dtype:
        gathers = unit * s  # one layer cast to compute dtype
    else:
        gathers = 0
    batch = 6 * 4 * A * rows_chip * T + (8 * A * per_micro // dp if st.reference == "cache" else 0)

    parts = {"params": params, "adapters": adapters, "optimizer": opt, "reference": ref, "gradients": grads,
             "activations": acts["total"], "weight_gathers": gathers, "batch": batch}
    parts = {k: int(round(v)) for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return {"bytes": parts, "activation_parts": {k: int(v) for k, v in acts.items()}, "problems": problems,
            "replicated": replicated,
            "rows_per_chip": rows_chip, "rows_per_micro_batch": rows, "pairs_per_micro_batch": per_micro}


def _lora_parts(config, cfg, mesh) -> dict | None:
    """Per-chip bytes of a LoRA run's frozen base, adapters and the adapters' optimizer state (None: no LoRA)."""
    from lnpo.models import lora

    spec = lora.spec_from_config(config.model.lora) if not stages.get(config.stage).num_labels else None
    if spec is None:
        return None
    base_infos, adapter_infos, abstract = lora_infos(cfg, spec, config.model.lora.base_dtype)
    base_counts, _ = per_chip_param_elements(base_infos, mesh)
    counts, _ = per_chip_param_elements(adapter_infos, mesh)
    return {"base": sum(n * i.itemsize for n, i in zip(base_counts, base_infos)),
            "adapters": sum(n * i.itemsize for n, i in zip(counts, adapter_infos)),
            "optimizer": optimizer_bytes(config, abstract, adapter_infos, counts)}


def _resolve_chip(chip_type, hbm_gib, peak_tflops):
    if chip_type is not None and chip_type not in CHIPS:
        raise ConfigError(f"--chip-type {chip_type!r} is unknown; known: {', '.join(CHIPS)} "
                         "(or pass --peak-tflops and --hbm-gib)")
    peak, hbm = CHIPS.get(chip_type, (None, None))
    if peak_tflops:
        peak = peak_tflops * 1e12
    if hbm_gib:
        hbm = float(hbm_gib)
    if peak is None or hbm is None:
        raise ConfigError("pass --chip-type, or both --peak-tflops and --hbm-gib")
    return peak, hbm


def plan(config, chips: int | None = None, hbm_gib: float | None = None, *, chip_type: str | None = "v5p",
         mfu: float = 0.4, peak_tflops: float | None = None, model_cfg=None) -> dict[str, Any]:
    """Per-chip memory and step time of ``config`` on ``chips`` chips.

    chips: resolves a ``-1`` in ``config.mesh.shape`` (default: the mesh's product, 1 for the -1).
    hbm_gib / peak_tflops: override the ``chip_type`` table (:data:`CHIPS`).
    model_cfg: a ``ModelConfig`` to use instead of the one the config names.

    Returns a dict: ``bytes`` (per chip: params, optimizer, reference, gradients,
    activations, weight_gathers, batch, total), ``usable_bytes``, ``fits``,
    ``problems`` (the configuration cannot run as is), ``suggestions`` (knobs
    and the total each gives), ``flops_per_step``, ``step_time_s`` and the inputs.
    """
    from lnpo import parallel
    from lnpo.train.flops import forward_flops_per_token, matmul_params

    cfg = model_config(config) if model_cfg is None else model_cfg
    shape = parallel.mesh_shape_of(config.mesh)
    notes = []
    if chips is None:
        chips = math.prod(x for x in shape if x != -1)
        if -1 in shape:
            notes.append(f"mesh {shape} has a -1 and no chip count was given: planned for {chips} chip(s) "
                         "(pass --chips)")
    given = tuple(parallel.resolve_mesh_shape(shape, chips))
    mesh = parallel.full_mesh_shape(given)
    peak, hbm = _resolve_chip(chip_type, hbm_gib, peak_tflops)
    infos, abstract = param_infos(cfg)

    ref_mode = reference_mode(config)
    st = Settings(mesh=mesh, micro_batches=int(config.train.micro_batches), remat=cfg.remat, reference=ref_mode,
                  reference_dtype=config.reference.dtype)
    mem = _memory(config, cfg, infos, st, chips, abstract)
    usable = int(hbm * GIB * USABLE_FRACTION)
    fits = mem["bytes"]["total"] <= usable

    T = row_length(config)
    G, A = int(config.train.global_batch), st.micro_batches
    tokens = A * mem["rows_per_micro_batch"] * T
    passes = 3 + (1 if ref_mode in ("in_step", "base") else 0)  # base: the reference forward runs in the step
    flops = tokens * forward_flops_per_token(cfg, T) * passes
    step_time = flops / (chips * peak * mfu)

    if config.data.layout != "padded":
        notes.append(f"layout {config.data.layout!r}: rows per micro-batch vary with the data; "
                     f"planned for the most ({mem['rows_per_micro_batch']})")
    if not config.model.path:
        notes.append(f"embedded tiny model: vocabulary planned at its upper bound {EMBEDDED_VOCAB}")
    if mem["replicated"]:
        notes.append("replicated over a mesh axis that does not divide them (each chip holds them whole): "
                     + "; ".join(mem["replicated"]))
    if ref_mode == "cache":
        notes.append("reference cache: one forward pass over the training set before step 1 "
                     "(about a third of an epoch's training compute), reused by every run with the same data")

    out = {
        "name": config.name, "stage": config.stage, "layout": config.data.layout,
        "loss": config.loss.name if stages.get(config.stage).objective else None,
        "model": {"source": config.model.path or "embedded tiny", "model_type": cfg.model_type,
                  "params": sum(math.prod(i.shape) for i in infos), "matmul_params": matmul_params(cfg),
                  "layers": cfg.num_layers, "hidden": cfg.hidden_size, "heads": cfg.num_heads,
                  "kv_heads": cfg.num_kv_heads, "vocab": cfg.vocab_size, "param_dtype": cfg.param_dtype,
                  "compute_dtype": cfg.compute_dtype, "remat": cfg.remat},
        "chips": chips, "mesh": given, "chip": {"type": chip_type, "hbm_gib": hbm, "peak_flops": peak},
        "lora": ({"rank": int(config.model.lora.rank), "base_dtype": config.model.lora.base_dtype}
                 if config.model.lora.rank and not stages.get(config.stage).num_labels else None),
        "reference": {"mode": ref_mode, "dtype": config.reference.dtype if ref_mode == "in_step" else None},
        "batch": {"pairs_per_step": G, "micro_batches": A, "pairs_per_micro_batch": mem["pairs_per_micro_batch"],
                  "rows_per_micro_batch": mem["rows_per_micro_batch"], "seq_len": T,
                  "rows_per_chip": mem["rows_per_chip"], "tokens_per_step": tokens},
        "bytes": mem["bytes"], "activation_parts": mem["activation_parts"],
        "usable_bytes": usable, "fits": fits and not mem["problems"], "problems": mem["problems"],
        "flops_per_step": flops, "mfu": mfu, "step_time_s": step_time,
        "tokens_per_s": tokens / step_time if step_time else float("inf"),
        "notes": notes,
    }
    out["suggestions"] = [] if fits else _suggestions(config, cfg, infos, st, chips, usable, abstract)
    return out


def with_row_length(config, length: int):
    """A copy of ``config`` whose rows are ``length`` tokens: ``data.seq_len = length`` and
    ``data.max_len`` the longest pair the layout fits in it (half a shared-prompt row)."""
    c = copy.deepcopy(config)
    c.data.seq_len = int(length)
    c.data.max_len = int(length) // 2 if config.data.layout == "shared_prompt" else int(length)
    c.data.max_prompt_len = min(int(c.data.max_prompt_len), c.data.max_len - 1)
    return c


def longest_row(config, chips: int | None = None, *, multiple: int = 128, limit: int = 1 << 21, **plan_kwargs) -> int:
    """The longest row length T (a multiple of ``multiple`` x the context axis) at which
    ``config`` fits per :func:`plan` with everything else as configured, or 0 if none does.
    A pair is 2 rows of T (padded) or one shared-prompt row of T (prompt + both responses)."""
    from lnpo import parallel

    shape = parallel.mesh_shape_of(config.mesh)
    n = chips if chips is not None else math.prod(x for x in shape if x != -1)
    step = int(multiple) * parallel.full_mesh_shape(parallel.resolve_mesh_shape(shape, n))[3]
    fits = lambda k: plan(with_row_length(config, k * step), chips, **plan_kwargs)["fits"]  # noqa: E731
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi * step <= limit and fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * step


def _knobs(config, cfg, st: Settings, chips: int) -> list[tuple[str, str, Settings]]:
    """(name, how to set it, settings) for each knob that can lower memory from ``st``."""
    d, f, t, c = st.mesh
    out = []
    if st.reference == "in_step":
        out.append(("reference cache", "--config.reference.mode=cache", dataclasses.replace(st, reference="cache")))
        if st.reference_dtype != "bfloat16":
            out.append(("bf16 reference", "--config.reference.dtype=bfloat16",
                        dataclasses.replace(st, reference_dtype="bfloat16")))
    if d > 1:
        if config.mesh.get("shape"):  # as the config gives its mesh: the tuple form, else the named axes
            how = "--config.mesh.shape='" + (f"(1,{d * f},{t})" if c == 1 else f"(1,{d * f},{t},{c})") + "'"
        else:
            how = f"--config.mesh.data=1 --config.mesh.fsdp={d * f}"
        out.append(("more fsdp", how, dataclasses.replace(st, mesh=(1, d * f, t, c))))
    if st.remat != "full":
        out.append(("remat full", "--config.model.remat=full", dataclasses.replace(st, remat="full")))
    G, dp = int(config.train.global_batch), d * f
    more = [a for a in range(st.micro_batches + 1, G + 1) if G % a == 0 and (G // a) % dp == 0]
    if more:
        out.append(("more micro-batches", "", dataclasses.replace(st, micro_batches=more[-1])))  # filled in below
    return out


def _suggestions(config, cfg, infos, st: Settings, chips: int, usable: int, abstract) -> list[dict]:
    """Each knob alone, then the knobs combined in order until the config fits."""
    out = []
    for name, how, new in _knobs(config, cfg, st, chips):
        if name == "more micro-batches":  # the fewest micro-batches that fit, else the most possible
            G, dp = int(config.train.global_batch), new.mesh[0] * new.mesh[1]
            for a in range(st.micro_batches + 1, G + 1):
                if G % a == 0 and (G // a) % dp == 0:
                    cand = dataclasses.replace(st, micro_batches=a)
                    if _memory(config, cfg, infos, cand, chips, abstract)["bytes"]["total"] <= usable:
                        new = cand
                        break
            how = f"--config.train.micro_batches={new.micro_batches}"
        total = _memory(config, cfg, infos, new, chips, abstract)["bytes"]["total"]
        out.append({"knob": name, "set": how, "total_bytes": total, "fits": total <= usable})
    # combined, cheapest first: the order of _knobs
    cur, applied = st, []
    for _ in range(5):
        if _memory(config, cfg, infos, cur, chips, abstract)["bytes"]["total"] <= usable:
            break
        knobs = _knobs(config, cfg, cur, chips)
        if not knobs:
            break
        name, how, new = knobs[0]
        if name == "more micro-batches":
            how = f"--config.train.micro_batches={new.micro_batches}"
        cur, applied = new, applied + [how]
    if applied and len(applied) > 1:
        total = _memory(config, cfg, infos, cur, chips, abstract)["bytes"]["total"]
        out.append({"knob": "combined", "set": " ".join(applied), "total_bytes": total, "fits": total <= usable})
    # the state alone (params + optimizer + gradients) at full fsdp: chips needed
    fixed = _memory(config, cfg, infos, dataclasses.replace(st, mesh=(1, chips, 1, 1)), chips, abstract)["bytes"]
    state = fixed["params"] + fixed["optimizer"] + fixed["gradients"]
    if state > usable / 2:
        need = math.ceil(state * chips / (usable / 2))
        out.append({"knob": "more chips", "set": f"about {need} chips (params + AdamW + gradients under half of HBM "
                    "at full fsdp)", "total_bytes": None, "fits": None})
    return out


# ----------------------------------------------------------------------------- report
def _gib(x) -> str:
    return f"{x / GIB:8.2f}"


def format_plan(p: dict) -> str:
    m, b, by = p["model"], p["batch"], p["bytes"]
    chip = p["chip"]
    ref = p["reference"]
    lines = [
        f"lnpo plan: {p['name']} ({p['stage']}{', ' + p['loss'] if p['loss'] else ''})",
        f"  model: {m['source']} ({m['model_type']}, {m['params'] / 1e9:.3f}B params, {m['layers']} layers, "
        f"hidden {m['hidden']}, heads {m['heads']}/{m['kv_heads']} kv, vocab {m['vocab']}); "
        f"params {m['param_dtype']}, compute {m['compute_dtype']}, remat {m['remat']}",
        f"  mesh (data, fsdp, tensor{', context' * (len(p['mesh']) == 4)}) = {p['mesh']} on {p['chips']} chips "
        f"({chip['type'] or 'custom'}: {chip['hbm_gib']:g} GiB HBM, {chip['peak_flops'] / 1e12:g} TFLOP/s peak)",
        f"  batch: {b['pairs_per_step']} {'examples' if p['stage'] == 'sft' else 'pairs'}/step = "
        f"{b['micro_batches']} micro-batches x {b['pairs_per_micro_batch']}; {b['rows_per_micro_batch']} rows x "
        f"{b['seq_len']} tokens per micro-batch, {b['rows_per_chip']} rows per chip",
        "",
        "  per-chip memory                            GiB",
    ]
    rows = [
        (f"parameters ({m['param_dtype']} master)" if not p.get("lora") else
         f"frozen base ({p['lora']['base_dtype']})", by["params"]),
        *([(f"LoRA adapters (rank {p['lora']['rank']}, float32)", by["adapters"])] if p.get("lora") else []),
        ("optimizer (AdamW mu + nu)", by["optimizer"]),
        (f"reference ({ref['mode']}{', ' + ref['dtype'] if ref['dtype'] else ''})", by["reference"]),
        ("gradients", by["gradients"]),
        (f"activations (remat {m['remat']})", by["activations"]),
        ("fsdp weight gathers", by["weight_gathers"]),
        ("batch arrays", by["batch"]),
        ("total", by["total"]),
    ]
    lines += [f"    {label:36s}{_gib(value)}" for label, value in rows]
    lines[-1] += (f"  of {p['usable_bytes'] / GIB:.1f} usable ({USABLE_FRACTION:.0%} of {chip['hbm_gib']:g})")
    if p["problems"]:
        lines.append("  WILL NOT RUN: " + "; ".join(p["problems"]))
    elif p["fits"]:
        lines.append(f"  fits: {(p['usable_bytes'] - by['total']) / GIB:.1f} GiB to spare per chip")
    else:
        lines.append(f"  DOES NOT FIT: {by['total'] / GIB:.1f} GiB > {p['usable_bytes'] / GIB:.1f} GiB usable per chip")
    lines += ["", f"  step: {p['flops_per_step']:.3e} FLOPs; at {p['mfu']:.0%} MFU {p['step_time_s']:.3g} s/step, "
              f"{p['tokens_per_s']:.3g} tokens/s ({p['tokens_per_s'] / p['chips']:.3g} per chip)"]
    if p["suggestions"]:
        lines += ["", "  what helps (per-chip total with the change):"]
        for s in p["suggestions"]:
            if s["total_bytes"] is None:
                lines.append(f"    {s['knob']:20s} {s['set']}")
            else:
                verdict = "fits" if s["fits"] else "still too big"
                lines.append(f"    {s['knob']:20s} {s['total_bytes'] / GIB:8.2f} GiB  {verdict:14s} {s['set']}")
    if "longest_row" in p:
        per_pair = "one shared-prompt row" if p["layout"] == "shared_prompt" else "two rows"
        lines.append(f"  longest row that fits: {p['longest_row']} tokens (a pair is {per_pair}; "
                     f"--config.data.seq_len={p['longest_row']})")
    for n in p["notes"]:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
_DASHED = ("--hbm-gib", "--chip-type", "--peak-tflops")


def _normalize_argv(argv: list[str]) -> list[str]:
    """Accept ``--hbm-gib`` as well as absl's ``--hbm_gib`` (and the other dashed flags)."""
    out = []
    for arg in argv:
        for flag in _DASHED:
            if arg == flag or arg.startswith(flag + "="):
                arg = flag.replace("-", "_").replace("__", "--", 1) + arg[len(flag):]
        out.append(arg)
    return out


def main(argv=None):
    from absl import app, flags

    from lnpo.cli import report_user_errors
    from lnpo.config_files import define_config_flag

    argv = _normalize_argv(sys.argv if argv is None else argv)
    define_config_flag(argv)
    flags.DEFINE_integer("chips", None, "number of chips (resolves a -1 in config.mesh.shape)")
    flags.DEFINE_float("hbm_gib", None, "HBM per chip in GiB (default: from --chip_type)")
    flags.DEFINE_string("chip_type", "v5p", f"one of {', '.join(CHIPS)}: peak FLOP/s and HBM")
    flags.DEFINE_float("peak_tflops", None, "peak dense bf16 TFLOP/s per chip (default: from --chip_type)")
    flags.DEFINE_float("mfu", 0.4, "model-FLOPs utilization assumed for the step time")
    flags.DEFINE_bool("json", False, "print the plan as JSON")
    flags.DEFINE_bool("longest", False, "also find the longest row (tokens) that fits with these settings")
    flags.mark_flags_as_required(["config"])

    def _run(_):
        F = flags.FLAGS
        kw = dict(hbm_gib=F.hbm_gib, chip_type=F.chip_type, mfu=F.mfu, peak_tflops=F.peak_tflops)
        p = report_user_errors("lnpo.plan", plan, F.config, chips=F.chips, **kw)
        if F.longest:
            p["longest_row"] = report_user_errors("lnpo.plan", longest_row, F.config, F.chips, **kw)
        print(json.dumps(p, indent=2, default=str) if F.json else format_plan(p))
        sys.exit(0 if p["fits"] else 1)

    app.run(_run, argv=argv)


if __name__ == "__main__":
    main()
