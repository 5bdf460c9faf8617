"""What the decay diagnostics cost per epoch, beside the epoch they are read at (process CPU time, medians).

    .venv/bin/python bench/diagnostics_cost.py [--members 51] [--rounds 5] [--threads 1]

An array of the Adam quickstart's shape (resnet8 on 400 digits images, batch 32: 12 steps an epoch; coupled Adam,
whose diagnostics do the most: per-weight rates, percentiles, per-channel √v̂ and rank correlations) trains one
epoch; then, ROUNDS times each: the epoch's steps alone, the epoch's rows without the diagnostics (evaluation and
norms), the diagnostics (ArrayTrainer._diagnostics), and the last epoch's per-channel records
(diagnostics.channel_records). The training step itself does not change with them (bench/step_ab.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=51)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    import torch

    from study import diagnostics as diag
    from study.data import load_dataset
    from study.engine import ArrayConfig, ArrayTrainer
    from study.spec import DataSpec, MemberSpec, ModelSpec, TrainSpec

    torch.set_num_threads(a.threads)
    data = load_dataset("digits", train_subset=400)
    members = [MemberSpec("adam", "coupled", 0.002 * (1 + k % 6), 0.01 * (1 + k % 9), seed=k % 3) for k in range(a.members)]
    tr = ArrayTrainer(members, data, ArrayConfig(ModelSpec("resnet8"), TrainSpec(epochs=1 + a.rounds, batch_size=32),
                                                 DataSpec()), "cpu")
    tr.train_epoch()

    def cpu(fn) -> float:
        t = time.process_time()
        fn()
        return time.process_time() - t

    lr_now, s = tr.base_lr * 0.5, 0.5
    x, y = tr._batch(torch.arange(32), torch.Generator().manual_seed(0))
    times = {"12 training steps": [], "evaluation and norms": [], "diagnostics": [], "per-channel records": []}
    for _ in range(a.rounds):
        times["12 training steps"].append(cpu(lambda: [tr.train_step(x, y, tr._schedule[0]) for _ in range(12)]))
        times["evaluation and norms"].append(cpu(lambda: (tr.evaluate(), tr._per_layer_sq(tr.decayed))))
        times["diagnostics"].append(cpu(lambda: tr._diagnostics(lr_now, s)))
        times["per-channel records"].append(cpu(lambda: diag.channel_records(
            tr.decayed, [v / tr.sqrt_v_epochs for v in tr.sqrt_v_sum])))
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    epoch = med["12 training steps"] + med["evaluation and norms"] + med["diagnostics"]
    print(f"resnet8, digits 400, batch 32, K={a.members} coupled Adam, {a.threads} thread(s); CPU ms, median of "
          f"{a.rounds} rounds (torch {torch.__version__})")
    for k, v in med.items():
        print(f"  {k:<22} {v:9.1f} ms")
    print(f"diagnostics: {med['diagnostics'] / epoch:.1%} of an epoch's CPU time; per-channel records (last epoch "
          f"only): {med['per-channel records'] / epoch:.1%} of one epoch")


if __name__ == "__main__":
    main()
