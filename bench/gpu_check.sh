#!/usr/bin/env bash
# The prepared GPU check (one H100, at most 8 minutes, data decoding included):
#   bench/gpu_check.sh /path/to/cifar10-parquet-folder [out-dir]
# Steps, each time-boxed; a step that fails or runs out of time is reported and the next one runs:
#   1. environment (torch, device); 1b. a few training steps under torch.cuda.set_sync_debug_mode("error");
#   2. `study bench`, eager: ResNet-20 arrays at K = 1, 16, 64, 128 (batch 512, bf16, channels-last, cuDNN
#      autotuning) against the plain single-model loop (DataLoader, batch 128, same settings), same run;
#   2b, 2c. the largest K again, each with one setting turned off: cuDNN autotuning (2b), channels-last (2c);
#      the summary gives each as a ratio to step 2's row of the same K;
#   2d. each ResNet-20 member convolution forward + backward, grouped vs batched GEMM, NCHW and channels-last
#      (bench/conv_forms.py), writing this GPU's table; 2e. the largest K with train.conv auto from that table;
#   2f. K = 1 and 16 with train.cuda_graph (the whole step recorded once and replayed), against step 2's rows;
#   3. the CIFAR-10 landscape through the engine (`study train`, no services): SGD coupled vs independent,
#      6 lr × 8 λ, 10 epochs, compiled as a study's arrays are on CUDA (bench/gpu_landscape.yaml; fewer epochs
#      only if the measured throughput says 10 would not fit the time left, and it says so), with its slopes;
#   4. `study bench`, torch.compile: K = 1 and 128 (GPU_CHECK_COMPILE_MEMBERS) against the plain loop, with
#      the compile time of each shape;
#   5. the summary: throughput table (eager and compiled), landscape and slopes, peak memory, targets, and
#      which steps failed.
# GPU_CHECK_TINY=1 (or SMALL=1): the same steps on a CPU at tiny size with the GPU settings forced (bf16,
# channels-last, cuDNN autotuning, torch.compile), so nothing can fail on the GPU that a CPU could have shown.
# GPU_CHECK_BUDGET_S: wall-clock budget of the whole script (default 480 on a GPU, 1500 tiny).
set -uo pipefail  # no -e: one failing step must not stop the others
cd "$(dirname "$0")/.."
DATA=${1:?usage: bench/gpu_check.sh CIFAR10_PARQUET_DIR [OUT_DIR]}
DATA=$(cd "$DATA" && pwd) || { echo "no such folder: $1"; exit 2; }
OUT=${2:-${OUT:-build/gpu_check}}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
STUDY=${STUDY:-.venv/bin/study}; PY=${PY:-.venv/bin/python}
TINY=${GPU_CHECK_TINY:-${SMALL:-0}}
FORCE=(--precision bf16 --channels-last true --cudnn-benchmark true)  # the GPU settings (auto on CUDA; forced so a CPU takes them too)
if [[ "$TINY" == 1 ]]; then
  DEVICE=cpu; MEMBERS=1,2; KMAX=2; CMEMBERS=1,2; GMEMBERS=1,2; BATCH=16; BUDGET=${GPU_CHECK_BUDGET_S:-1500}
  TIMING=(--warmup 1 --steps 2 --windows 2); WORKERS=(--workers 0); TINYFLAG=--tiny
else
  DEVICE=cuda; MEMBERS=1,16,64,128; KMAX=128; CMEMBERS=${GPU_CHECK_COMPILE_MEMBERS:-1,128}; GMEMBERS=1,16; BATCH=512
  BUDGET=${GPU_CHECK_BUDGET_S:-480}; TIMING=(--warmup 5 --steps 10 --windows 3); WORKERS=(--workers 4); TINYFLAG=
fi
T0=$(date +%s); : > "$OUT/failed.txt"
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
step() {  # step NAME LIMIT_S LOG cmd...: run time-boxed, output to the screen and LOG; report a failure and go on
  local name=$1 limit=$2 log=$3; shift 3
  local rest; rest=$(left); (( limit > rest )) && limit=$rest
  if (( limit < 20 )); then
    echo "!! SKIPPED: $name (the budget of $BUDGET s is spent)"; echo "$name: skipped, budget spent" >> "$OUT/failed.txt"; return
  fi
  echo "== $name (limit $limit s; elapsed $(( $(date +%s) - T0 )) s) =="
  timeout --kill-after=20 "$limit" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  if (( rc != 0 )); then
    local why="exit $rc"; (( rc == 124 || rc == 137 )) && why="out of time after $limit s"
    echo "!! FAILED: $name ($why); going on"; echo "$name: $why" >> "$OUT/failed.txt"
  fi
}
step "1. environment" 60 "$OUT/env.txt" "$PY" -c "
import os, platform, torch
print('torch', torch.__version__, '| python', platform.python_version(), '| cuda', torch.version.cuda)
cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor())
print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else f'cpu: {cpu}', '| cpus', os.cpu_count(),
      '| bf16 supported:', torch.cuda.is_bf16_supported() if torch.cuda.is_available() else 'cpu autocast')"
step "1b. no host sync in the training step" 120 "$OUT/sync.txt" "$PY" bench/gpu_check_report.py synccheck "$OUT" \
  --device "$DEVICE"
step "2. throughput, eager ($DEVICE)" 150 "$OUT/bench_eager.txt" "$STUDY" bench --device "$DEVICE" --model resnet20 \
  --members "$MEMBERS" --batch-size "$BATCH" --dataset parquet --data-path "$DATA" "${FORCE[@]}" --compile off \
  "${TIMING[@]}" "${WORKERS[@]}" --json "$OUT/bench_eager.json"  # --workers: the plain loop's DataLoader (the ablations have none)
ABLATE=(bench --device "$DEVICE" --model resnet20 --members "$KMAX" --batch-size "$BATCH" --dataset parquet
        --data-path "$DATA" --precision bf16 --compile off --no-baseline "${TIMING[@]}")
step "2b. K=$KMAX without cuDNN autotuning" 90 "$OUT/bench_no_autotune.txt" "$STUDY" "${ABLATE[@]}" \
  --channels-last true --cudnn-benchmark false --json "$OUT/bench_no_autotune.json"
step "2c. K=$KMAX without channels-last (NCHW)" 90 "$OUT/bench_nchw.txt" "$STUDY" "${ABLATE[@]}" \
  --channels-last false --cudnn-benchmark true --json "$OUT/bench_nchw.json"
if [[ "$TINY" == 1 ]]; then CONV=(--device cpu --members 2 --batch 8 --warmup 1 --repeats 2)
else CONV=(--device cuda --members 16,"$KMAX" --batch 256 --warmup 3 --repeats 10); fi
rm -f "$OUT/conv_table.json"
step "2d. member convolutions per layer: grouped vs batched GEMM" 90 "$OUT/conv_forms.txt" "$PY" bench/conv_forms.py \
  "${CONV[@]}" --write "$OUT/conv_table.json"
[[ -f "$OUT/conv_table.json" ]] && step "2e. K=$KMAX with train.conv auto" 90 "$OUT/bench_conv_auto.txt" \
  env STUDY_CONV_TABLE="$OUT/conv_table.json" "$STUDY" "${ABLATE[@]}" --channels-last true --cudnn-benchmark true \
  --conv auto --json "$OUT/bench_conv_auto.json"
step "2f. K=$GMEMBERS with the whole step as one CUDA graph" 90 "$OUT/bench_cuda_graph.txt" "$STUDY" bench \
  --device "$DEVICE" --model resnet20 --members "$GMEMBERS" --batch-size "$BATCH" --dataset parquet --data-path "$DATA" \
  "${FORCE[@]}" --compile off --cuda-graph --no-baseline "${TIMING[@]}" --json "$OUT/bench_cuda_graph.json"
COMPILE_RESERVE=$([[ "$TINY" == 1 ]] && echo 600 || echo 150)  # left for step 4
rm -f "$OUT/landscape.yaml"
if ! "$PY" bench/gpu_check_report.py plan "$OUT" $TINYFLAG --budget-s $(( $(left) - COMPILE_RESERVE - 30 )); then
  echo "!! FAILED: landscape plan"; echo "landscape plan: failed" >> "$OUT/failed.txt"
  [[ "$TINY" == 1 ]] || cp bench/gpu_landscape.yaml "$OUT/landscape.yaml"  # on the GPU: the spec as it stands
fi
[[ -f "$OUT/landscape.yaml" ]] || echo "!! SKIPPED: landscape (no spec)"
[[ -f "$OUT/landscape.yaml" ]] && step "3. landscape: SGD coupled vs independent" $(( $(left) - COMPILE_RESERVE )) \
  "$OUT/train.log" "$STUDY" train "$OUT/landscape.yaml" --data-path "$DATA" --out "$OUT/landscape.json" \
  --device "$DEVICE" "${FORCE[@]}" --compile true  # a study's arrays compile on CUDA (train.compile auto)
step "4. throughput, torch.compile ($DEVICE)" 600 "$OUT/bench_compiled.txt" "$STUDY" bench --device "$DEVICE" \
  --model resnet20 --members "$CMEMBERS" --batch-size "$BATCH" --dataset parquet --data-path "$DATA" "${FORCE[@]}" \
  --compile on "${TIMING[@]}" "${WORKERS[@]}" --json "$OUT/bench_compiled.json"
"$PY" bench/gpu_check_report.py summary "$OUT" $TINYFLAG || echo "!! FAILED: summary"
echo "== done in $(( $(date +%s) - T0 )) s; results in $OUT =="
