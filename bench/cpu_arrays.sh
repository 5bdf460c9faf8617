#!/usr/bin/env bash
# CPU: the quickstart's members trained as one array vs one at a time, end to end (`study train`:
# training, per-epoch evaluation and metrics), same members, same process settings, one run.
#   bench/cpu_arrays.sh [EPOCHS] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-10}; OUT=${2:-build/cpu_arrays}; STUDY=${STUDY:-.venv/bin/study}
mkdir -p "$OUT"
for k in 30 1; do
  python3 - "$OUT/k$k.yaml" "$k" "$EPOCHS" <<'PY'
import sys, yaml
s = yaml.safe_load(open("search_spaces/quickstart.yaml"))
s["arms"] = s["arms"][:1]                       # SGD + coupled: 5 × 6 = 30 members
s["search"]["seeds"] = [0]
s["train"]["epochs"] = int(sys.argv[3])
s["execution"]["members_per_trial"] = int(sys.argv[2])
s["name"] = f"cpu-arrays-k{sys.argv[2]}"
yaml.safe_dump(s, open(sys.argv[1], "w"))
PY
  start=$(date +%s.%N)
  OMP_NUM_THREADS=1 "$STUDY" train "$OUT/k$k.yaml" --out "$OUT/k$k.json" > "$OUT/k$k.log"
  end=$(date +%s.%N)
  echo "K=$k: $(python3 -c "print(f'{$end - $start:.1f}')") s for 30 members × $EPOCHS epochs" | tee -a "$OUT/summary.txt"
done
python3 - "$OUT/summary.txt" <<'PY'
import re, sys
t = [float(re.search(r": ([\d.]+) s", l).group(1)) for l in open(sys.argv[1])][-2:]
print(f"arrays of 30 are {t[1] / t[0]:.2f}x faster than one member at a time (process start included)")
PY
