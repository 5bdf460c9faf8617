"""Does an arm's slope of λ*(η) move with the run's length? The same spec at several training budgets.

    .venv/bin/python bench/budget_sweep.py SPEC OUT --epochs 10 20 40 80 [--arms 1 2] [--report]

Each budget is the spec with `train.epochs` set to E and every chosen arm's weight-decay columns moved by
the timescale rule (docs/science.md "Placing a grid"): at a fixed learning rate the decay timescale τ is
proportional to 1/λ in every decay mode, so keeping τ the same fraction of a run E/E0 times as long puts
each column at λ·E0/E (E0: the spec's epochs). Rows, seeds, points and everything else stay as written.
Nothing is tuned to a prediction: the columns move by that one rule, whatever slope comes out.

Each (budget, arm) is one `study train` in its own process (one thread; two at a time, the longest first),
results under OUT/E<epochs>_<arm>/; the verdicts come from the same code `study export` uses. Printed per
budget and arm: the slope, its interval and verdict, rows censored at a grid edge, and the regime: the
scale-invariant weights' angular update at the middle epoch over its equilibrium value, at each row's best
cell (median over rows; seeds averaged), i.e. how far the run got towards the equilibrium the laws assume,
and the final training loss there (near 0: the training set is memorized).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import fmt, landscape_doc  # the verdicts, as `study export` computes them, and their spelling


def budget_spec(spec: dict, epochs: int, arm: int) -> dict:
    """The spec at `epochs` with only arm `arm`, its λ columns moved by the timescale rule."""
    out = json.loads(json.dumps(spec))
    e0 = spec["train"]["epochs"]
    a = out["arms"][arm]
    for end in ("low", "high"):
        a["weight_decay"][end] = float(f"{a['weight_decay'][end] * e0 / epochs:.6g}")
    out["arms"] = [a]
    out["train"]["epochs"] = epochs
    out["name"] = f"{spec['name']}-e{epochs}-{a['decay']}"
    out.get("search", {})["refine"] = 0
    return out


def regime(results: Path, metric: str) -> tuple[float, float]:
    """At each row's best cell (seeds averaged), the mid-run angular update over its equilibrium value and the
    final training loss; each the median over rows."""
    members = json.loads(results.read_text())["members"]
    cells: dict[tuple, list] = {}
    for m in members:
        cells.setdefault((m["lr"], m["weight_decay"]), []).append(m)
    rows: dict[float, tuple] = {}
    for (lr, wd), ms in cells.items():
        vals = [m["final"].get(metric, math.nan) for m in ms]
        mean = statistics.fmean(vals) if all(math.isfinite(v) for v in vals) else math.inf
        if lr not in rows or mean < rows[lr][0]:
            rows[lr] = (mean, ms)
    ratios, train = [], []
    for _, ms in rows.values():
        losses = [m["final"].get("train_loss", math.nan) for m in ms]
        train.append(statistics.fmean(losses) if all(math.isfinite(v) for v in losses) else math.nan)
        per = []
        for m in ms:
            h = m["history"][len(m["history"]) // 2 - 1]  # the middle epoch's row
            eq = h.get("angular_equilibrium", math.nan)
            if eq and math.isfinite(eq) and math.isfinite(h.get("angular_update", math.nan)):
                per.append(h["angular_update"] / eq)
        if per:
            ratios.append(statistics.fmean(per))
    train = [v for v in train if math.isfinite(v)]
    return (statistics.median(ratios) if ratios else math.nan), (statistics.median(train) if train else math.nan)


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(prog="bench/budget_sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("spec")
    p.add_argument("out")
    p.add_argument("--epochs", type=int, nargs="+", required=True)
    p.add_argument("--arms", type=int, nargs="+", help="arm indices (default: every arm)")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--report", action="store_true", help="train nothing: read the runs already under OUT")
    args = p.parse_args()
    spec = yaml.safe_load(Path(args.spec).read_text())
    arms = args.arms if args.arms is not None else list(range(len(spec["arms"])))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    study = str(Path(sys.executable).with_name("study"))
    jobs = sorted(((e, a) for e in args.epochs for a in arms), key=lambda j: -j[0])
    label = {j: f"E{j[0]}_{spec['arms'][j[1]]['decay']}" for j in jobs}
    if not args.report:
        pending, running = list(jobs), {}
        while pending or running:
            while pending and len(running) < args.parallel:
                j = pending.pop(0)
                home = out / label[j]
                home.mkdir(exist_ok=True)
                (home / "spec.yaml").write_text(yaml.safe_dump(budget_spec(spec, *j), sort_keys=False))
                log = open(home / "train.log", "w")
                cmd = [study, "train", str(home / "spec.yaml"), "--out", str(home / "members.json")]
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                running[j] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, time.time())
                print(f"[budget] {label[j]}: started", flush=True)
            for j, (proc, log, t0) in list(running.items()):
                if proc.poll() is not None:
                    log.close()
                    del running[j]
                    print(f"[budget] {label[j]}: exit {proc.returncode} in {time.time() - t0:.0f} s", flush=True)
            time.sleep(2)
    metric = spec.get("search", {}).get("metric", "test_error")
    print(f"\nbudget sweep of {args.spec} (λ columns moved by E0/E, E0 = {spec['train']['epochs']} epochs; "
          f"slope [95 % interval] verdict; regime = mid-run angular update / equilibrium at the rows' best cells)")
    for e in args.epochs:
        for a in arms:
            home = out / label[(e, a)]
            res = home / "members.json"
            if not res.exists():
                print(f"  E={e:<3} {label[(e, a)]}: no results ({home / 'train.log'})")
                continue
            doc = landscape_doc(res)
            v = doc["verdict"]["arms"][0]
            land = doc["arms"][0]
            k = sum(c is not None for c in land.get("censored", []))
            best = min((x for row in land["error"] for x in row if x is not None and math.isfinite(x)), default=math.nan)
            ratio, train = regime(res, metric)
            print(f"  E={e:<3} {v['arm']:<18} {fmt(v['slope'])} [{fmt(v['ci'][0])}, {fmt(v['ci'][1])}] "
                  f"{v['outcome']}{'*' if v.get('decisive') else ''}; {k} of {len(land['lr'])} rows at an edge; "
                  f"regime {ratio:.2f}; final train loss {train:.2g}; best {metric} {best:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
