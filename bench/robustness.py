"""Does a spec's verdict survive what should not matter? One unperturbed run and six perturbed ones.

    bench/robustness.sh SPEC [OUT] [--via run|train]   (OUT defaults to build/robustness/<spec name>)

--via run (the default): each run is a real `study run SPEC --home OUT/<label>` (Ray, Optuna, MLflow; its
own home, so nothing is shared), one after the other. --via train: each run is `study train SPEC` (the same
engine and member arrays as a study's trials, in one process, without Ray and the stores), two at a time
with one thread each; the verdicts are computed from its results by the same code `study export` uses.
Perturbations, none of which should change the answer:
  train.seed 1, train.seed 2      another batch order
  seeds [2, 3]                    other members' seeds (initial weights): as many as the spec has, after its last
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


def perturbations(spec_path: str) -> list[tuple[str, list[str], dict]]:
    """(label, --set overrides, extra environment) per run, the unperturbed one first. The other seeds are as
    many as the spec's, numbered after its last (a 2-seed spec [0, 1] gets [2, 3]; a 3-seed one [3, 4, 5])."""
    from study.spec import load_spec

    seeds = load_spec(spec_path).search.seeds
    other = ",".join(str(max(seeds) + 1 + i) for i in range(len(seeds)))
    return [
        ("unperturbed", [], {}),
        ("train.seed=1", ["train.seed=1"], {}),
        ("train.seed=2", ["train.seed=2"], {}),
        (f"seeds=[{other}]", [f"search.seeds=[{other}]"], {}),
        ("arrays of 15", ["execution.members_per_trial=15"], {}),
        ("arrays of 60", ["execution.members_per_trial=60"], {}),
        ("avx2 kernels", [], {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2"}),
    ]


def _slug(label: str) -> str:
    return label.replace(" ", "_").replace("=", "-").replace("[", "").replace("]", "").replace(",", "-")


def start(study: str, spec: str, out: Path, label: str, sets: list[str], env: dict, via: str):
    """Start one run; returns (process, finish) where finish(rc) -> the run's record."""
    home = out / _slug(label)
    overrides = [a for s in sets for a in ("--set", s)]
    if via == "run":
        cmd = [study, "run", spec, "--home", str(home)] + overrides
        env = {**os.environ, **env}
    else:
        home.mkdir(parents=True, exist_ok=True)
        cmd = [study, "train", spec, "--out", str(home / "members.json")] + overrides
        env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    t0 = time.time()
    log = open(f"{home}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def finish(rc: int) -> dict:
        log.close()
        wall = time.time() - t0
        doc = None
        if rc == 0 and via == "run":
            found = list(home.glob("*/export/landscape.json"))
            doc = json.loads(found[0].read_text()) if found else None
        elif rc == 0:
            doc = landscape_doc(home / "members.json")
        return {"label": label, "rc": rc, "wall_s": wall, "doc": doc, "log": f"{home}.log"}
    return proc, finish


def _wall(log: str) -> float:
    """For --report: a `study train` run's own time from its log ("wrote N members to … in T s"), else NaN."""
    import re

    try:
        found = re.findall(r"wrote \d+ members to .* in ([\d.]+) s", Path(log).read_text())
    except OSError:
        return math.nan
    return float(found[-1]) if found else math.nan


def landscape_doc(results: Path) -> dict:
    """landscape.json's verdict and arms, from `study train`'s results, by study.landscape (as export does)."""
    from study.landscape import landscapes, study_verdict

    data = json.loads(results.read_text())
    metric = data["metric"]
    rows = [{**{k: r[k] for k in ("optimizer", "decay", "lr", "weight_decay", "seed")},
             "error": r["final"].get(metric, float("nan")), "diverged": bool(r["final"].get("diverged"))}
            for r in data["members"]]
    lands = landscapes(rows, metric=metric)
    doc = {"verdict": study_verdict(lands), "arms": [L.to_json() for L in lands]}
    (results.parent / "landscape.json").write_text(json.dumps(doc, indent=1))
    return doc


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
    import argparse

    parser = argparse.ArgumentParser(prog="bench/robustness.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--via", choices=("run", "train"), default="run")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: read the runs already under OUT again (e.g. after a change of estimator)")
    args = parser.parse_args()
    spec, via = args.spec, args.via
    out = Path(args.out or f"build/robustness/{Path(spec).stem}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    study = str(Path(sys.executable).with_name("study"))
    runs = perturbations(spec)
    parallel = 1 if via == "run" else 2      # study train: two runs at a time, one thread each
    results: list[dict | None] = [None] * len(runs)
    pending = [] if args.report else list(enumerate(runs))
    running = []
    if args.report:
        for i, (label, _, _) in enumerate(runs):
            home = out / _slug(label)
            found = [home / "members.json"] if via == "train" else list(home.glob("*/export/landscape.json"))
            ok = bool(found) and found[0].is_file()
            doc = (landscape_doc(found[0]) if via == "train" else json.loads(found[0].read_text())) if ok else None
            results[i] = {"label": label, "rc": 0 if ok else 1, "wall_s": _wall(f"{home}.log"), "doc": doc,
                          "log": f"{home}.log"}
    while pending or running:
        while pending and len(running) < parallel:
            i, (label, sets, env) = pending.pop(0)
            print(f"[robustness] {label}: study {via} {spec} {' '.join('--set ' + s for s in sets)} "
                  f"{' '.join(f'{k}={v}' for k, v in env.items())}".rstrip(), flush=True)
            running.append((i, *start(study, spec, out, label, sets, env, via)))
        i, proc, finish = running.pop(0)
        r = finish(proc.wait())
        results[i] = r
        print(f"[robustness] {r['label']}: exit {r['rc']} in {r['wall_s']:.0f} s", flush=True)
    base = results[0]["doc"]
    print(f"\nrobustness of {spec} via study {via} ({len(runs) - 1} perturbations; slope [95 % interval] "
          f"verdict, decisive = *)")
    agree = 0
    for r in results:
        if r["doc"] is None:
            print(f"  {r['label']:<14} FAILED (exit {r['rc']}): see {r['log']}")
            continue
        vs = verdicts(r["doc"])
        cells = " | ".join(f"{name} {fmt(v)} [{fmt(ci[0])}, {fmt(ci[1])}] {outcome}{'*' if dec else ''}"
                           for name, v, ci, outcome, dec in vs)
        shift = "" if r is results[0] or base is None else \
            f"; cells moved (median / max |log ratio|) {moved(r['doc'], base)}"
        print(f"  {r['label']:<14} {r['wall_s']:5.0f} s  {cells}{shift}")
        if r is not results[0] and base is not None:
            same = [(o, d) for _, _, _, o, d in vs] == [(o, True) for _, _, _, o, _ in verdicts(base)]
            agree += same
    base_ok = base is not None and all(d for *_, d in verdicts(base))
    print(f"unperturbed run decisive everywhere: {'yes' if base_ok else 'no'}; perturbed runs with every arm and "
          f"pair decisive and as unperturbed: {agree} of {len(runs) - 1} (target: at least {len(runs) - 2})")
    return 0 if base_ok and agree >= len(runs) - 2 else 1


if __name__ == "__main__":
    sys.exit(main())
