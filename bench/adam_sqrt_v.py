"""The median √v̂ of Adam's decayed weights on the quickstart's model and data, without decay: the typical value
behind coupled Adam's decay timescale √v̂/(η·λ) (study/registry.py, docs/science.md).

    .venv/bin/python bench/adam_sqrt_v.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study import data as D  # noqa: E402
from study import diagnostics as diag  # noqa: E402
from study import engine as E  # noqa: E402
from study import spec as S  # noqa: E402

torch.set_num_threads(1)
data = D.load_dataset("digits", train_subset=400)
lrs = [0.001, 0.003, 0.01, 0.03]
members = [S.MemberSpec("adam", "coupled", lr, 0.0, seed=0) for lr in lrs]
tr = E.ArrayTrainer(members, data, E.ArrayConfig(S.ModelSpec("resnet8"), S.TrainSpec(epochs=20, batch_size=32), S.DataSpec()), "cpu")
for ep in range(20):
    tr.train_epoch()
    if ep in (1, 4, 9, 19):
        roots = [diag.sqrt_second_moment("adam", tr.optimizer.state[p], {"betas": (0.9, 0.999)}).flatten(1) for p in tr.decayed]
        r = torch.cat(roots, 1)
        med = r.median(1).values
        print(ep + 1, "median sqrt(v̂) per lr:", [f"{v:.2e}" for v in med.tolist()], "q10/q90", [f"{a:.1e}/{b:.1e}" for a, b in zip(r.quantile(0.1, 1).tolist(), r.quantile(0.9, 1).tolist())])
