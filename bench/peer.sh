#!/usr/bin/env bash
# `study run` against its peer, the same study as a typical Ray Tune user runs it (bench/peer_tune.py: one
# Tune trial per setting, plain nn.Module ResNet, torch.optim weight decay on all parameters, DataLoader,
# lr_scheduler, tune.report per epoch, MLflowLoggerCallback), same settings, epochs, batch, schedule and CPUs,
# one after the other in this script: both wall times, their ratio, and both landscapes side by side.
#   bench/peer.sh [SPEC] [EPOCHS] [OUT_DIR]      default: search_spaces/quickstart.yaml, the spec's epochs
#   PEER_TINY=1 bench/peer.sh                    2 lr × 2 λ per arm, one seed, 1 epoch, 128 images: a minute or two
# Both sides run a copy of SPEC with search.refine: 0 (refinement would train members the peer does not).
# Exits non-zero if either side fails (the other side and the comparison still run where they can).
set -uo pipefail
cd "$(dirname "$0")/.."
SPEC=${1:-search_spaces/quickstart.yaml}; EPOCHS=${2:-}; OUT=${3:-build/peer${PEER_TINY:+-tiny}}
PY=${PY:-.venv/bin/python}; STUDY=${STUDY:-.venv/bin/study}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0} \
       RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
now() { date +%s.%N; }
rm -rf "$OUT"; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
"$PY" bench/peer_tune.py prepare "$SPEC" "$OUT" ${EPOCHS:+--epochs "$EPOCHS"} ${PEER_TINY:+--tiny} || exit 2

echo "peer: Ray Tune, one trial per setting (log $OUT/peer.log)"
t0=$(now)
"$PY" bench/peer_tune.py run "$OUT/spec.yaml" "$OUT/peer" > "$OUT/peer.log" 2>&1; peer_rc=$?
t1=$(now)
grep -E "^peer: " "$OUT/peer.log"
echo "study run: member arrays (log $OUT/study.log)"
"$STUDY" --home "$OUT/home" run "$OUT/spec.yaml" > "$OUT/study.log" 2> "$OUT/study.err"; study_rc=$?
t2=$(now)
grep -E "members recorded|failed" "$OUT/study.log" | head -n 5
peer_s=$(python3 -c "print($t1 - $t0)"); study_s=$(python3 -c "print($t2 - $t1)")
[ $peer_rc -eq 0 ] || { echo "peer FAILED (exit $peer_rc); see $OUT/peer.log"; tail -n 20 "$OUT/peer.log"; }
[ $study_rc -eq 0 ] || { echo "study run FAILED (exit $study_rc); see $OUT/study.log, $OUT/study.err"; tail -n 20 "$OUT/study.err"; }
cmp_rc=0
if [ $peer_rc -eq 0 ] && [ $study_rc -eq 0 ]; then
  "$PY" bench/peer_tune.py compare "$OUT/spec.yaml" "$OUT" --peer-s "$peer_s" --study-s "$study_s" \
      --study-home "$OUT/home" --study-log "$OUT/study.log" 2> "$OUT/compare.err" | tee "$OUT/summary.txt"
  cmp_rc=${PIPESTATUS[0]}
  [ "$cmp_rc" -eq 0 ] || { echo "compare FAILED (exit $cmp_rc)"; tail -n 20 "$OUT/compare.err"; }
else
  printf 'wall time: peer %.1f s (exit %d), study run %.1f s (exit %d); no comparison\n' "$peer_s" $peer_rc "$study_s" $study_rc
fi
[ $peer_rc -eq 0 ] && [ $study_rc -eq 0 ] && [ "$cmp_rc" -eq 0 ]
