#!/usr/bin/env bash
# The small real training loop of issue 18 on this CPU: rollouts of the 1.5B (teacher) and the
# embedded 0.5B on development seeds, keep the successes, LoRA-SFT the 0.5B on them, and bench the
# 0.5B before and after on held-out seeds. Phases: rollouts, before, sft, after (default: all).
# A control phase runs the same load -> merge -> q8_0 path with a learning rate of 0 (the LoRA
# adapter starts at zero, so the merged model is the base): what the conversion alone changes.
# Usage: bash benchmarks/train_small/run.sh [PHASE...]   (rollouts before sft after control)
set -euo pipefail
cd "$(dirname "$0")/../.."
CTX=${CTXFOLD:-.venv/bin/ctxfold}
OUT=${OUT:-benchmarks/results/train-small}
LEN=${LEN:-16000}               # tokens of input: twice the 8,192-token window below
STUDENT='local?window=8192'
TEACHER='local:qwen2.5-coder-1.5b?window=8192'
TASKS=${TASKS:-"sniah:3 codeqa:4"}  # rollouts: task:instances per development seed
BENCH_TASKS=${BENCH_TASKS:-"sniah:8 codeqa:8"}  # before/after: task:instances, held-out seed
DEV_SEEDS=${DEV_SEEDS:-"1 3 4"}
TEST_SEED=${TEST_SEED:-2}
ITER=6
mkdir -p "$OUT"

stamp() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/timeline.log"; }

rollouts() {
  for seed in $DEV_SEEDS; do
    for tn in $TASKS; do
      stamp "rollouts teacher ${tn%%:*} seed $seed"
      $CTX train rollouts "${tn%%:*}" --n "${tn##*:}" --seed "$seed" --lengths "$LEN" \
        --model "$TEACHER" --sub-model "$STUDENT" --max-iterations $ITER -q --out "$OUT/rollouts-1.5b"
      stamp "rollouts student ${tn%%:*} seed $seed"
      $CTX train rollouts "${tn%%:*}" --n "${tn##*:}" --seed "$seed" --lengths "$LEN" \
        --model "$STUDENT" --samples 2 --temperature 0.7 --max-iterations $ITER -q \
        --out "$OUT/rollouts-0.5b"
    done
  done
}

bench() {  # bench MODEL FOLDER
  for tn in $BENCH_TASKS; do
    stamp "bench ${tn%%:*} into $2"
    $CTX bench "${tn%%:*}" --methods rlm --n "${tn##*:}" --seed "$TEST_SEED" --lengths "$LEN" \
      --model "$1" --sub-model "$STUDENT" --max-iterations $ITER -q --out "$OUT/$2"
  done
}

sft() {
  stamp "export"
  $CTX train export "$OUT"/rollouts-1.5b "$OUT"/rollouts-0.5b --min-score 1 --val-fraction 0 \
    --out "$OUT/data.jsonl" | tee "$OUT/export.txt"
  stamp "sft"
  $CTX train sft --data "$OUT/data.jsonl" --base local --out "$OUT/sft" --lora-rank 16 \
    --epochs "${EPOCHS:-0.6}" --learning-rate "${LR:-5e-4}" --grad-accum 2 --max-length 4096 \
    2>&1 | tee "$OUT/sft.log" | { grep -v -E "it/s]|s/it]" || true; }
  stamp "sft done"
}

control() {
  stamp "control: the base through the same path, learning rate 0"
  $CTX train sft --data "$OUT/data.jsonl" --base local --out "$OUT/control" --lora-rank 16 \
    --epochs 0.02 --learning-rate 0 --grad-accum 1 --max-length 4096 >/dev/null 2>&1
  bench "local:$OUT/control/model.gguf?window=8192" control
}

phases=("$@")
[ ${#phases[@]} -gt 0 ] || phases=(rollouts before sft after control)
for phase in "${phases[@]}"; do
  case $phase in
    rollouts) rollouts ;;
    before) bench "$STUDENT" before ;;
    sft) sft ;;
    after) bench "local:$OUT/sft/model.gguf?window=8192" after ;;
    control) control ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
stamp "done: $*"
