#!/usr/bin/env bash
# bench/robustness.sh SPEC [OUT]: the spec run unperturbed and under six perturbations that must not change
# its verdicts (batch order, member seeds, array size, CPU kernels); see bench/robustness.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
exec .venv/bin/python bench/robustness.py "$@"
