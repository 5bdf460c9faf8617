"""Judge candidate quickstart designs on a pilot landscape, before paying for a robustness run.

    .venv/bin/python bench/design_pilot.py results/2026-12-07/pilot_240steps_cells.csv \\
        --design "rows 0-6, coupled 1-13, independent 1-10" --seeds 2

The pilot (`study train` of both arms on a wide, fine grid with several seeds; its cells in a CSV of decay, lr,
weight_decay, seed, test_loss, test_error, diverged) is cut to each candidate: a range of learning-rate rows and
of weight-decay columns per arm (indices into the pilot's sorted axes, inclusive), and every subset of
`--seeds` of the pilot's seeds. Each cut gets its verdicts from study.landscape, as `study export` computes
them; a design is printed with each seed subset's slopes, intervals and verdicts (decisive = *), the most common
verdict and in how many subsets it came out, and its cost in member-steps (members × the pilot's steps).

What this can and cannot say: seed subsets perturb the members' initial weights only; batch order, array size
and CPU kernels are perturbations the pilot does not contain, so a design chosen here is then measured by
bench/robustness.sh, which runs all six.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.landscape import landscapes, study_verdict  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import fmt, verdicts as robustness_verdicts  # noqa: E402

DECAYS = ("coupled", "decoupled", "independent")


def load(path: str, metric: str, optimizer: str) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({"optimizer": optimizer, "decay": r["decay"], "lr": float(r["lr"]),
                         "weight_decay": float(r["weight_decay"]), "seed": int(r["seed"]),
                         "error": float(r[metric]) if r[metric] not in ("", "None") else float("nan"),
                         "diverged": r["diverged"] == "1"})
    return rows


def parse_design(text: str) -> dict:
    """'rows 0-6, coupled 1-13, independent 1-10' -> {'rows': range(0, 7), 'coupled': range(1, 14), ...};
    A-B:S takes every S-th index (coupled 0-14:2: every other column, half a decade apart on the pilot's grid).
    The arms a design names are the arms it keeps (each a decay mode of the pilot)."""
    out = {}
    for part in text.split(","):
        m = re.fullmatch(rf"\s*(rows|{'|'.join(DECAYS)})\s+(\d+)-(\d+)(?::(\d+))?\s*", part)
        if not m:
            raise SystemExit(f"invalid --design: expected 'rows A-B, coupled A-B, independent A-B' (each A-B or A-B:S; "
                             f"arms among {', '.join(DECAYS)}), but got {part!r}")
        out[m[1]] = range(int(m[2]), int(m[3]) + 1, int(m[4] or 1))
    if "rows" not in out or len(out) < 2:
        raise SystemExit(f"invalid --design: rows and at least one arm are needed in {text!r}")
    return out


def verdicts(members: list[dict], metric: str) -> list[tuple]:
    """(name, value, interval, outcome, decisive) per arm, then per pair: robustness.verdicts, on these members."""
    return robustness_verdicts({"verdict": study_verdict(landscapes(members, metric=metric))})


def judge(cells: list[dict], design: dict, k: int, metric: str, steps: int) -> None:
    arms = [a for a in DECAYS if a in design]
    axes = {arm: (sorted({c["lr"] for c in cells if c["decay"] == arm}),
                  sorted({c["weight_decay"] for c in cells if c["decay"] == arm})) for arm in arms}
    seeds = sorted({c["seed"] for c in cells})
    keys, lines = [], []
    for ss in itertools.combinations(seeds, k):
        keep = []
        for arm in arms:
            lrs, wds = axes[arm]
            rows, cols = {lrs[i] for i in design["rows"]}, {wds[i] for i in design[arm]}
            keep += [c for c in cells if c["decay"] == arm and c["lr"] in rows and c["weight_decay"] in cols
                     and c["seed"] in ss]
        vs = verdicts(keep, metric)
        keys.append(tuple((o, d) for *_, o, d in vs))
        lines.append(f"   seeds {ss}: " + " | ".join(f"{fmt(s)} [{fmt(ci[0])}, {fmt(ci[1])}] {o}{'*' if d else ''}"
                                                   for _, s, ci, o, d in vs))
    mode, n = Counter(keys).most_common(1)[0]
    members = len(design["rows"]) * sum(len(design[a]) for a in arms) * k
    print(f"== {design['text']}, {k} seeds: {members} members, {members * steps:,} member-steps; most common verdicts "
          f"{[o for o, _ in mode]} ({'decisive' if all(d for _, d in mode) else 'not decisive'}) in {n} of {len(keys)}")
    print("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/design_pilot.py", description=__doc__.split("\n\n")[0])
    p.add_argument("cells", help="the pilot's cells (CSV)")
    p.add_argument("--design", action="append", required=True,
                   help="'rows A-B, coupled A-B, independent A-B' (indices into the pilot's axes, inclusive; "
                        "A-B:S every S-th); repeatable")
    p.add_argument("--seeds", type=int, default=2, help="seeds per candidate (every subset of the pilot's)")
    p.add_argument("--metric", default="test_loss", choices=("test_loss", "test_error"))
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"), help="the pilot's optimizer")
    p.add_argument("--steps", type=int, default=240, help="the pilot's steps per member (for the cost)")
    a = p.parse_args()
    cells = load(a.cells, a.metric, a.optimizer)
    for text in a.design:
        judge(cells, {**parse_design(text), "text": text}, a.seeds, a.metric, a.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
