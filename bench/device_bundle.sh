#!/usr/bin/env bash
# The Python packages `study run` and bench/peer.sh need on a lent GPU machine that its image lacks (Ray,
# Optuna, MLflow and what they import), as cp312 manylinux wheels in two folders, each small enough to travel
# with one device call beside the CIFAR-10 Parquet files (64 MiB per call, the data about 18 MiB):
#   bench/device_bundle.sh DEVICE_PACKAGES   -> .whl-ray/ (Ray) and .whl-rest/ (the others), both ignored by git
# DEVICE_PACKAGES: a file with one package name per line that the GPU machine's image already has (for example
# `pip list --format=freeze | cut -d= -f1` run there); those are not bundled, the machine keeps its own versions.
# To fit, the wheels are repacked without what no study uses: Ray's Java jar and dashboard web client, MLflow's
# web UI (`study ui` does not run on the device) and plotly's Jupyter extension. See bench/README.md for the
# two device calls that use them. Needs network access to the package index (here: yes; the device: no).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
RAY=ray==2.60.0; PINS=(optuna==5.0.0 mlflow==3.17.2 plotly==7.1.0 "ray[tune]==2.60.0")
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
norm() { tr 'A-Z_.' 'a-z--' | sed 's/ .*//' | sort -u; }
[[ -n "${1:-}" && -f "$1" ]] || { echo "usage: bench/device_bundle.sh DEVICE_PACKAGES (a file: one package name a line)"; exit 2; }
norm < "$1" > "$work/device.txt"
(( $(wc -l < "$work/device.txt") > 50 )) || { echo "the device's package list looks wrong: $(wc -l < "$work/device.txt") names"; exit 2; }

echo "resolving ${PINS[*]} for CPython 3.12 on manylinux ..."
"$PY" -m pip install -q --dry-run --ignore-installed --report "$work/report.json" "${PLATFORM[@]}" \
  --target "$work/t" "${PINS[@]}" 2>&1 | grep -v '^WARNING: Location' || true
"$PY" - "$work/report.json" "$work/device.txt" > "$work/missing.txt" <<'EOF'
import json, re, sys
have = set(open(sys.argv[2]).read().split())
for i in json.load(open(sys.argv[1]))["install"]:
    m = i["metadata"]
    if re.sub(r"[_.]", "-", m["name"].lower()) not in have:
        print(f"{m['name']}=={m['version']}")
EOF
echo "$(wc -l < "$work/missing.txt") packages missing on the device"
rm -rf .whl-ray .whl-rest; mkdir -p .whl-ray .whl-rest "$work/dl"
"$PY" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$work/dl" $(cat "$work/missing.txt") 2>&1 | grep -v '^WARNING: Location' || true

"$PY" - "$work/dl" <<'EOF'
# repack: drop what no study uses on the device; keep the wheel's RECORD consistent (drop the dropped lines)
import sys, zipfile
from pathlib import Path
DROP = {"ray": ("ray/jars/", "ray/dashboard/client/build/", ".js.map"),
        "mlflow": ("mlflow/server/js/",),
        "plotly": ("plotly/labextension/", "plotly-7.1.0.data/data/share/jupyter/")}
for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    name = whl.name.split("-")[0].lower()
    drop = DROP.get(name, ())
    out = Path(".whl-ray" if name == "ray" else ".whl-rest") / whl.name
    if not drop:
        out.write_bytes(whl.read_bytes())
        continue
    gone = lambda n: n.startswith(tuple(d for d in drop if d.endswith("/"))) or n.endswith(tuple(d for d in drop if not d.endswith("/")))
    with zipfile.ZipFile(whl) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if gone(info.filename):
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(l + b"\n" for l in data.split(b"\n") if l and not gone(l.split(b",")[0].decode()))
            dst.writestr(info, data)
    print(f"repacked {whl.name}: {whl.stat().st_size / 2**20:.1f} MiB -> {out.stat().st_size / 2**20:.1f} MiB")
EOF
for d in .whl-ray .whl-rest; do
  grep -qxF "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
  echo "$d: $(ls "$d" | wc -l) wheels, $(du -sm "$d" | cut -f1) MiB"
done
