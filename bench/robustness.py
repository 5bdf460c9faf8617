"""Does a spec's verdict survive what should not matter? One unperturbed run and six perturbed ones.

    bench/robustness.sh SPEC [OUT]        (OUT defaults to build/robustness/<spec name>)

Each run is a real `study run SPEC --home OUT/<label>` (its own home, so nothing is shared), one after the
other. Perturbations, none of which should change the answer:
  train.seed 1, train.seed 2      another batch order
  seeds [2, 3]                    other members' seeds (initial weights)
  arrays of 15, arrays of 60      execution.members_per_trial: members packed differently, other rounding
  avx2 kernels                    ATEN_CPU_CAPABILITY=avx2, DNNL_MAX_CPU_ISA=AVX2 in Ray's workers
It prints one row per run: each arm's slope, interval and verdict, the pair's, the wall time, and how far
the perturbation moved the seed-averaged cells (median and largest |log(m / m_unperturbed)| over the grid),
so a perturbation that changed nothing is visible; then whether every arm and pair was decisive and reached
the unperturbed run's verdict. Raw logs and each run's landscape.json stay under OUT.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

RUNS = [  # label, --set overrides, extra environment
    ("unperturbed", [], {}),
    ("train.seed=1", ["train.seed=1"], {}),
    ("train.seed=2", ["train.seed=2"], {}),
    ("seeds=[2,3]", ["search.seeds=[2,3]"], {}),
    ("arrays of 15", ["execution.members_per_trial=15"], {}),
    ("arrays of 60", ["execution.members_per_trial=60"], {}),
    ("avx2 kernels", [], {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2"}),
]


def run(study: str, spec: str, out: Path, label: str, sets: list[str], env: dict) -> dict:
    home = out / label.replace(" ", "_").replace("=", "-").replace("[", "").replace("]", "").replace(",", "-")
    cmd = [study, "run", spec, "--home", str(home)] + [a for s in sets for a in ("--set", s)]
    t0 = time.time()
    with open(f"{home}.log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    wall = time.time() - t0
    found = list(home.glob("*/export/landscape.json"))
    doc = json.loads(found[0].read_text()) if rc == 0 and found else None
    return {"label": label, "rc": rc, "wall_s": wall, "doc": doc, "log": f"{home}.log"}


def verdicts(doc: dict) -> list[tuple[str, float, list, str, bool]]:
    """(name, value, interval, outcome, decisive) per arm, then per pair."""
    out = []
    for v in doc["verdict"]["arms"]:
        out.append((v["arm"], v["slope"], v["ci"], v["outcome"], bool(v.get("decisive"))))
    for p in doc["verdict"]["pairs"]:
        out.append((" − ".join(p["arms"]), p["difference"], p["ci"], p["outcome"],
                    p["outcome"] in ("differ", "no difference detected", "self-check holds")))
    return out


def moved(doc: dict, base: dict) -> str:
    """Median and largest |log ratio| of the seed-averaged cells shared with the unperturbed run."""
    ratios = []
    for a, b in zip(doc["arms"], base["arms"]):
        cells_b = {(lr, wd): e for lr, row in zip(b["lr"], b["error"]) for wd, e in zip(b["weight_decay"], row)}
        for lr, row in zip(a["lr"], a["error"]):
            for wd, e in zip(a["weight_decay"], row):
                e0 = cells_b.get((lr, wd))
                if e and e0 and e > 0 and e0 > 0:
                    ratios.append(abs(math.log(e / e0)))
    if not ratios:
        return "n/a"
    ratios.sort()
    return f"{ratios[len(ratios) // 2]:.2e} / {ratios[-1]:.2e}"


def fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:+.2f}"


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    spec = sys.argv[1]
    out = Path(sys.argv[2] if len(sys.argv) > 2 else f"build/robustness/{Path(spec).stem}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    study = str(Path(sys.executable).with_name("study"))
    results = []
    for label, sets, env in RUNS:
        print(f"[robustness] {label}: study run {spec} {' '.join('--set ' + s for s in sets)} "
              f"{' '.join(f'{k}={v}' for k, v in env.items())}".rstrip(), flush=True)
        r = run(study, spec, out, label, sets, env)
        results.append(r)
        print(f"[robustness] {label}: exit {r['rc']} in {r['wall_s']:.0f} s", flush=True)
    base = results[0]["doc"]
    print(f"\nrobustness of {spec} ({len(RUNS) - 1} perturbations; slope [95 % interval] verdict, decisive = *)")
    agree = 0
    for r in results:
        if r["doc"] is None:
            print(f"  {r['label']:<14} FAILED (exit {r['rc']}): see {r['log']}")
            continue
        vs = verdicts(r["doc"])
        cells = " | ".join(f"{name} {fmt(v)} [{fmt(ci[0])}, {fmt(ci[1])}] {outcome}{'*' if dec else ''}"
                           for name, v, ci, outcome, dec in vs)
        shift = "" if r is results[0] else f"; cells moved (median / max |log ratio|) {moved(r['doc'], base)}"
        print(f"  {r['label']:<14} {r['wall_s']:5.0f} s  {cells}{shift}")
        if r is not results[0] and base is not None:
            same = [(o, d) for _, _, _, o, d in vs] == [(o, True) for _, _, _, o, _ in verdicts(base)]
            agree += same
    base_ok = base is not None and all(d for *_, d in verdicts(base))
    print(f"unperturbed run decisive everywhere: {'yes' if base_ok else 'no'}; perturbed runs with every arm and "
          f"pair decisive and as unperturbed: {agree} of {len(RUNS) - 1} (target: at least {len(RUNS) - 2})")
    return 0 if base_ok and agree >= len(RUNS) - 2 else 1


if __name__ == "__main__":
    sys.exit(main())
