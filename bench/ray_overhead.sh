#!/usr/bin/env bash
# What the service adds: 128 members as 2 Ray Tune trials × 64 members through `study run` (local Ray,
# Optuna and MLflow SQLite stores, per-epoch checkpoints and records), against the engine alone on the
# same members and the same CPUs (`study train`, two processes of 64 members side by side).
#   bench/ray_overhead.sh [EPOCHS] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-10}; OUT=${2:-build/ray_overhead}; STUDY=${STUDY:-.venv/bin/study}
rm -rf "$OUT"; mkdir -p "$OUT"
python3 - "$OUT" "$EPOCHS" <<'PY'
import sys, yaml
out, epochs = sys.argv[1], int(sys.argv[2])
base = {"data": {"dataset": "digits", "train_subset": 400, "crop_padding": 0, "flip": False},
        "model": {"name": "resnet8"}, "train": {"epochs": epochs, "batch_size": 32, "device": "cpu"},
        "arms": [{"optimizer": "sgd", "decay": "coupled", "lr": {"low": 0.01, "high": 0.3, "points": 8},
                  "weight_decay": {"low": 0.001, "high": 1.0, "points": 8}}],
        "execution": {"members_per_trial": 64, "cpus_per_trial": 1}}
yaml.safe_dump({**base, "name": "overhead", "search": {"sampler": "grid", "seeds": [0, 1]}}, open(f"{out}/study.yaml", "w"))
for s in (0, 1):
    yaml.safe_dump({**base, "name": f"engine{s}", "search": {"sampler": "grid", "seeds": [s]}}, open(f"{out}/engine{s}.yaml", "w"))
PY
export OMP_NUM_THREADS=1
t0=$(date +%s.%N)
"$STUDY" train "$OUT/engine0.yaml" --out "$OUT/engine0.json" > "$OUT/engine0.log" &
"$STUDY" train "$OUT/engine1.yaml" --out "$OUT/engine1.json" > "$OUT/engine1.log" &
wait
t1=$(date +%s.%N)
"$STUDY" --home "$OUT/home" run "$OUT/study.yaml" > "$OUT/study.log" 2> "$OUT/study.err"
t2=$(date +%s.%N)
python3 - "$t0" "$t1" "$t2" "$EPOCHS" <<'PY' | tee "$OUT/summary.txt"
import sys
t0, t1, t2, e = map(float, sys.argv[1:])
engine, service = t1 - t0, t2 - t1
print(f"128 members × {int(e)} epochs: engine alone {engine:.1f} s, study run {service:.1f} s "
      f"(Ray start, stores, checkpoints, records and export included): overhead {100 * (service / engine - 1):+.1f} %")
PY
