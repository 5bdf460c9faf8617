#!/usr/bin/env bash
# The prepared GPU check (one H100, at most 8 minutes, data decoding included):
#   bench/gpu_check.sh /path/to/cifar10-parquet-folder [out-dir]
# 1. `study bench`: member-images/s of ResNet-20 arrays (K = 1, 16, 64, 128; batch 512, bf16,
#    channels-last, torch.compile) against the plain single-model loop (DataLoader, batch 128), same run.
# 2. A small CIFAR-10 landscape through the engine (`study train`, no services): SGD coupled vs
#    independent, 6 lr × 8 λ, 10 epochs; prints the slopes of log λ*(η) with their intervals.
# SMALL=1 shrinks both to a CPU-sized rehearsal of the same script.
set -euo pipefail
DATA=${1:?usage: bench/gpu_check.sh CIFAR10_PARQUET_DIR [OUT_DIR]}
OUT=${2:-${OUT:-build/gpu_check}}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
STUDY=${STUDY:-.venv/bin/study}
DEVICE=cuda; MEMBERS=1,16,64,128; BATCH=512; SPEC=bench/gpu_landscape.yaml
if [[ "${SMALL:-0}" == 1 ]]; then
  DEVICE=cpu; MEMBERS=1,4; BATCH=64
  python3 - "$OUT/small.yaml" <<'PY'
import sys, yaml
s = yaml.safe_load(open("bench/gpu_landscape.yaml"))
s["data"].update(train_subset=512, test_subset=256)
s["train"].update(epochs=1, device="cpu", compile=False, batch_size=64, warmup_epochs=0)
for a in s["arms"]:
    a["lr"]["points"] = 2; a["weight_decay"]["points"] = 3
yaml.safe_dump(s, open(sys.argv[1], "w"))
PY
  SPEC=$OUT/small.yaml
fi
t0=$(date +%s)
echo "== 1. throughput ($DEVICE) =="
"$STUDY" bench --device "$DEVICE" --model resnet20 --members "$MEMBERS" --batch-size "$BATCH" \
  --dataset parquet --data-path "$DATA" --warmup 5 --steps 10 --windows 3 --json "$OUT/bench.json" \
  | tee "$OUT/bench.txt"
if [[ "$DEVICE" == cuda ]]; then  # torch.compile of the array step: compile time in the warm-up, reported
  "$STUDY" bench --device cuda --model resnet20 --members 128 --batch-size "$BATCH" --no-baseline --compile \
    --dataset parquet --data-path "$DATA" --warmup 5 --steps 10 --windows 3 --json "$OUT/bench_compile.json" \
    | tee "$OUT/bench_compile.txt" || echo "torch.compile run failed (see above); eager numbers stand"
fi
echo "== 2. landscape: SGD coupled vs independent (elapsed $(( $(date +%s) - t0 )) s) =="
"$STUDY" train "$SPEC" --data-path "$DATA" --out "$OUT/landscape.json" --device "$DEVICE" > "$OUT/train.log"
tail -n 4 "$OUT/train.log"
echo "== done in $(( $(date +%s) - t0 )) s; results in $OUT =="
