"""A/B of the engine's training step: a git ref against the working tree, in one process, interleaved.

  .venv/bin/python bench/step_ab.py REF MODEL K BATCH [--threads 1] [--steps 5] [--rounds 5]

Builds the same array (SGD, coupled, K members) with the package at REF (extracted to a temporary
folder as `study_ref`) and with the working tree's `study`, then times STEPS steps of each, alternately,
ROUNDS times. Reported: process CPU time per step (robust on a machine shared with other work) and wall
time, medians over rounds, and their ratio ref / tree (> 1: the tree is faster). resnet8 runs on digits
(the quickstart's shapes), any other model on synthetic 32×32 images.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _extract(ref: str) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="step_ab_"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "study"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    shutil.move(str(tmp / "study"), str(tmp / "study_ref"))
    return tmp


def _stepper(pkg: str, model: str, K: int, batch: int, extra: dict):
    import torch

    E = importlib.import_module(f"{pkg}.engine")
    S = importlib.import_module(f"{pkg}.spec")
    D = importlib.import_module(f"{pkg}.data")
    data = D.load_dataset("digits") if model == "resnet8" else D.load_dataset("synthetic", synthetic_size=(1024, 64))
    members = [S.MemberSpec("sgd", "coupled", 0.05 * (1 + k % 7), 5e-4, seed=k) for k in range(K)]
    train = S.TrainSpec(epochs=1, batch_size=batch, **extra)
    tr = E.ArrayTrainer(members, data, E.ArrayConfig(S.ModelSpec(model), train, S.DataSpec()), "cpu")
    order, aug = tr._generators(0)
    perm = torch.randperm(len(data.train_y), generator=order)
    n = max(1, len(data.train_y) // tr.batch)
    state = {"i": 0}

    def step():
        i = state["i"] % n
        state["i"] += 1
        x, y = tr._batch(perm[i * tr.batch:(i + 1) * tr.batch], aug)
        # the step under its old name (older commits) or its current one; both take a float multiplier here
        (getattr(tr, "_step_fn", None) or tr.train_step)(x, y, 0.7)

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ref")
    p.add_argument("model")
    p.add_argument("K", type=int)
    p.add_argument("batch", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    tmp = _extract(a.ref)
    sys.path.insert(0, str(tmp))
    sys.path.insert(0, str(ROOT))
    try:
        ref, tree = _stepper("study_ref", a.model, a.K, a.batch, {}), _stepper("study", a.model, a.K, a.batch, {})
        for f in (ref, tree):
            for _ in range(3):
                f()
        cpu = {"ref": [], "tree": []}
        wall = {"ref": [], "tree": []}
        for _ in range(a.rounds):
            for name, f in (("ref", ref), ("tree", tree)):
                c, w = time.process_time(), time.perf_counter()
                for _ in range(a.steps):
                    f()
                cpu[name].append((time.process_time() - c) / a.steps)
                wall[name].append((time.perf_counter() - w) / a.steps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mc = {k: statistics.median(v) for k, v in cpu.items()}
    mw = {k: statistics.median(v) for k, v in wall.items()}
    print(f"{a.model} K={a.K} batch={a.batch} threads={a.threads}: CPU ms/step {a.ref} {mc['ref'] * 1e3:.1f}, "
          f"tree {mc['tree'] * 1e3:.1f} -> x{mc['ref'] / mc['tree']:.2f}; wall ms/step {mw['ref'] * 1e3:.1f}, "
          f"{mw['tree'] * 1e3:.1f} -> x{mw['ref'] / mw['tree']:.2f} (median of {a.rounds} rounds of {a.steps} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
