"""Where an XLA:CPU step's time goes: a ``jax.profiler`` trace summed by HLO op, with each dot's FLOPs.

Record one step's trace and the compiled HLO, then summarize them:

    XLA_FLAGS=--xla_dump_to=/tmp/hlo python benchmarks/dpo_step.py --impl lnpo ... --profile /tmp/prof
    python benchmarks/profile_summary.py /tmp/prof/plugins/profile/*/perfetto_trace.json.gz \\
        /tmp/hlo/module_*.jit_step_fn.cpu_after_optimizations.txt

(with several row buckets the dump holds one ``jit_step_fn`` module per bucket, in compile order: pass the
one of the profiled step, the last batch). Prints the total time of the dot fusions (``ynn_fusion`` on
XLA:CPU), their FLOPs and rate, the dot shapes by time, and the other ops by time with the jax operation
each comes from (the HLO's ``op_name``). Times are the trace's event durations summed over the executor's
threads, so ops that ran at the same time on two cores count twice.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import math
import re

_INSTR = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)\[([\d,]*)\]")
_DOT = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]\S* dot\(%?([\w.\-]+), %?([\w.\-]+)\)"
                  r".*lhs_contracting_dims=\{([\d,]*)\}")
_FUSION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = .* fusion\(.*calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def _dims(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_hlo(text: str):
    """(computation -> its lines, fusion instruction -> called computation, instruction -> (shape, op_name))."""
    computations, calls, instructions = {}, {}, {}
    current = None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head and ("->" in line or line.startswith("ENTRY")):
            current = computations.setdefault(head.group(1), [])
            continue
        if current is not None:
            current.append(line)
        m = _FUSION.match(line)
        if m:
            calls[m.group(1)] = m.group(2)
        m = _INSTR.match(line)
        if m:
            op = _OP_NAME.search(line)
            instructions[m.group(1)] = (f"{m.group(2)}[{m.group(3)}]", op.group(1) if op else "")
    return computations, calls, instructions


def dot_flops(lines: list[str]) -> tuple[int, list[str]]:
    """(FLOPs, shapes) of the dots in one computation: 2 x output elements x contracted size each."""
    shapes = {m.group(1): _dims(m.group(3)) for m in map(_INSTR.match, lines) if m}
    flops, described = 0, []
    for m in filter(None, map(_DOT.match, lines)):
        out, lhs = _dims(m.group(2)), shapes.get(m.group(3), [])
        contracted = math.prod(lhs[c] for c in _dims(m.group(5)) if c < len(lhs))
        flops += 2 * math.prod(out) * contracted
        described.append(f"{out}xK{contracted}")
    return flops, described


def summarize(trace: dict, hlo_text: str, top: int = 20) -> None:
    computations, calls, instructions = parse_hlo(hlo_text)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    dots = collections.defaultdict(lambda: [0.0, 0, 0])  # shapes -> [us, FLOPs, count]
    others = collections.defaultdict(lambda: [0.0, 0])  # (name, shape, op) -> [us, count]
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name not in instructions:
            continue
        if name in calls and name.startswith("ynn_fusion"):
            flops, shapes = dot_flops(computations.get(calls[name], []))
            entry = dots[" ".join(shapes) or name]
            entry[0] += e["dur"]
            entry[1] += flops
            entry[2] += 1
        else:
            shape, op = instructions[name]
            entry = others[(re.sub(r"\.\d+$", "", name), shape, re.sub(r"jit\(\w+\)/|closed_call/", "", op))]
            entry[0] += e["dur"]
            entry[1] += 1
    us = sum(d[0] for d in dots.values())
    flops = sum(d[1] for d in dots.values())
    print(f"dot fusions: {us / 1e3:.1f} ms, {flops / 1e9:.1f} GFLOP, {flops / max(us, 1) / 1e3:.1f} GF/s")
    for shapes, (t, f, n) in sorted(dots.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {t / 1e3:9.1f} ms {n:4d}x {f / 1e9:8.2f} GFLOP {f / max(t, 1) / 1e3:7.1f} GF/s  {shapes[:100]}")
    print(f"other ops: {sum(o[0] for o in others.values()) / 1e3:.1f} ms")
    for (name, shape, op), (t, n) in sorted(others.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {t / 1e3:9.1f} ms {n:4d}x {name[:28]:28s} {shape[:36]:36s} {op[-90:]}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", help="perfetto_trace.json.gz written by jax.profiler")
    ap.add_argument("hlo", help="the step's *.cpu_after_optimizations.txt (XLA_FLAGS=--xla_dump_to=DIR)")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    opener = gzip.open if args.trace.endswith(".gz") else open
    with opener(args.trace, "rt") as f:
        trace = json.load(f)
    with open(args.hlo) as f:
        summarize(trace, f.read(), top=args.top)


if __name__ == "__main__":
    main()
