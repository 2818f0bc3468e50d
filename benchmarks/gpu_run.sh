#!/usr/bin/env bash
# The one prepared GPU measurement of docs/performance.md ("GPU"): run from the repository
# root on a machine with one NVIDIA GPU and JAX with CUDA. It records the machine and the
# packages, checks cuDNN attention against the float32 einsum model
# (tests/models/test_attention.py), then times the DPO train step of a ~1.1B-parameter Llama
# (TinyLlama-1.1B's shape: hidden 2048, MLP 5632, 22 layers, 32 heads / 4 KV heads, vocab 32000)
# with bf16 compute and cached reference log-probs, each configuration in its own process.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_run.sh          # results: $OUT/results.jsonl, logs: $OUT/*.log
#
# LNPO_GPU_MODEL replaces the model flags (a small model for a dry run on CPU), LNPO_GPU_WHEELS
# names a folder of wheels (flax, optax) installed only when the machine's own packages cannot
# run lnpo. Each step has its own time limit, so one failure (an out-of-memory, a missing
# kernel) leaves the rest to run; the table at the end says what ran.
set -u
OUT=${OUT:-/tmp/lnpo-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
MODEL=${LNPO_GPU_MODEL:---hidden 2048 --intermediate 5632 --layers 22 --heads 32 --kv-heads 4 --vocab 32000}
SHAPE="--prompt-len 256 --response-len 256 --lengths fixed --layout padded --reference cache --dtype bfloat16"

(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true) \
  2>&1 | tee "$OUT/machine.log"
versions='import jax, flax, optax, numpy; print("jax", jax.__version__, "flax", flax.__version__, "optax",
optax.__version__, "numpy", numpy.__version__, "devices", jax.devices())'
smoke() {  # a tiny DPO step end to end: the packages can run lnpo
  timeout 120 "$PY" benchmarks/dpo_step.py --impl lnpo --hidden 64 --layers 2 --heads 4 --kv-heads 2 \
    --vocab 256 --batch 2 --prompt-len 8 --response-len 8 --steps 1 --warmup 1 >>"$OUT/smoke.log" 2>&1
}
"$PY" -c "$versions" 2>&1 | tee -a "$OUT/machine.log"
if ! smoke; then
  tail -5 "$OUT/smoke.log"
  if [ -n "${LNPO_GPU_WHEELS:-}" ]; then
    echo "the machine's packages failed the smoke run; installing $LNPO_GPU_WHEELS" | tee -a "$OUT/machine.log"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lnpo-site \
      "$LNPO_GPU_WHEELS"/*.whl 2>&1 | tail -3
    export PYTHONPATH="$PWD:/tmp/lnpo-site${PYTHONPATH#"$PWD"}"
    "$PY" -c "$versions" 2>&1 | tee -a "$OUT/machine.log"
    smoke || { tail -20 "$OUT/smoke.log"; exit 1; }
  else
    exit 1
  fi
fi
echo "smoke: ok" | tee -a "$OUT/machine.log"

# cuDNN attention (bf16) against the float32 einsum model: hidden states and every gradient
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/models/test_attention.py 2>&1 | tee "$OUT/attention_test.log" \
  | tail -3

step() {  # one configuration: its JSON line to results.jsonl, its whole output to steps.log
  echo "== $*" >>"$OUT/steps.log"
  timeout "${LNPO_GPU_STEP_TIMEOUT:-150}" "$PY" benchmarks/dpo_step.py --impl lnpo $MODEL $SHAPE --steps 5 \
    --warmup 2 "$@" >"$OUT/step.tmp" 2>&1
  local rc=$?
  cat "$OUT/step.tmp" >>"$OUT/steps.log"
  if grep -q '^{' "$OUT/step.tmp"; then
    grep '^{' "$OUT/step.tmp" >>"$OUT/results.jsonl"
  else
    local why
    why=$(grep -E 'Error|error|Killed' "$OUT/step.tmp" | tail -1 | cut -c1-300)
    echo "FAILED (rc $rc): $* :: ${why:-$(tail -1 "$OUT/step.tmp" | cut -c1-300)}" | tee -a "$OUT/failures.log"
  fi
}
step --batch 16 --attn-impl cudnn
step --batch 32 --attn-impl cudnn
step --batch 16 --attn-impl xla

"$PY" - "$OUT/results.jsonl" <<'EOF'
import json, sys
try:
    rows = [json.loads(line) for line in open(sys.argv[1])]
except FileNotFoundError:
    rows = []
print(f"{'attn':6} {'batch':>5} {'step_s':>7} {'tok/s':>9} {'mfu':>6} {'mfu_ds':>6} {'peak_tf':>7} "
      f"{'dev_mb':>8} {'compile':>7} {'loss0':>8}")
for r in rows:
    print(f"{r['attn_impl']:6} {r['batch']:5d} {r['step_s_median']:7.4f} {r['tokens_per_s']:9.0f} {r['mfu']:6.3f} "
          f"{r.get('mfu_datasheet', 0):6.3f} {r['matmul_peak_gflops'] / 1e3:7.1f} {r.get('device_peak_mb', 0):8.0f} "
          f"{r['compile_s']:7.1f} {r['first_loss']:8.5f}")
EOF
