"""The article's claims on an Adam pilot: each arm's verdict (test loss and test error), its best cell with the
spread over seeds, the decay diagnostics there, and per learning rate the norm-vs-√v̂ correlation at each arm's
best λ.

    .venv/bin/python bench/adam_claims.py coupled.json decoupled.json independent.json

Each JSON is `study train`'s result for one Adam arm (one decay mode) on a grid with several seeds.
"""
import json
import statistics as st
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study.landscape import landscapes, study_verdict  # noqa: E402

arms = {}
for path in sys.argv[1:]:
    d = json.load(open(path))
    arms[d["members"][0]["decay"]] = d["members"]
rows = []
for arm, ms in arms.items():
    for m in ms:
        rows.append({**{k: m[k] for k in ("optimizer", "decay", "lr", "weight_decay", "seed")},
                     "error": m["final"].get("test_loss", float("nan")), "diverged": bool(m["final"].get("diverged"))})
for metric in ("test_loss", "test_error"):
    rr = [{**r, "error": next(m["final"].get(metric) for m in arms[r["decay"]] if m["lr"] == r["lr"] and m["weight_decay"] == r["weight_decay"] and m["seed"] == r["seed"])} for r in rows]
    v = study_verdict(landscapes(rr, metric=metric))
    print(f"--- {metric}")
    for line in v["lines"]: print("  ", line)
def cell(ms, lr, wd): return [m for m in ms if m["lr"] == lr and m["weight_decay"] == wd]
lands = {L.decay: L for L in landscapes(rows, metric="test_loss")}
for arm, ms in arms.items():
    L = lands[arm]
    b = L.best
    c = cell(ms, b["lr"], b["weight_decay"])
    fin = [m["final"] for m in c]
    def mean(k): 
        v = [f.get(k, float("nan")) for f in fin]; return st.mean(v), (max(v) - min(v)) / 2
    te, tes = mean("test_error"); tl, tls = mean("test_loss")
    print(f"{arm:12s} best cell (seed-mean test loss) η={b['lr']:.3g} λ={b['weight_decay']:.3g}: test_loss {tl:.4f} ±{tls:.4f}, test_error {te:.4f} ±{tes:.4f} (half-range over {len(fin)} seeds)")
    for k in ("decay_spread", "norm_sqrt_v_corr", "angular_update", "angular_equilibrium", "head_norm"):
        v, s = mean(k); print(f"      {k:22s} {v:.4g} ±{s:.2g}")
    mid = [m["history"][9] for m in c]
    au = st.mean(h["angular_update"] for h in mid); ae = st.mean(h["angular_equilibrium"] for h in mid)
    print(f"      epoch 10: angular_update {au:.4g}, equilibrium {ae:.4g}, ratio {au / ae if ae == ae and ae else float('nan'):.3g}")
    # best error per arm on test_error too
# the correlation at a shared η: per η row, each arm's best λ (seed-mean test loss), its mean correlation
lrs = sorted({m["lr"] for m in arms[next(iter(arms))]})
print("per η: the norm-vs-√v̂ correlation at each arm's best λ of that row (mean over seeds)")
for lr in lrs:
    parts = []
    for arm, ms in arms.items():
        wds = sorted({m["weight_decay"] for m in ms})
        best = min(wds, key=lambda w: st.mean(m["final"].get("test_loss", 9) if not m["final"].get("diverged") else 9 for m in cell(ms, lr, w)))
        c = cell(ms, lr, best)
        parts.append(f"{arm} λ={best:.3g} r={st.mean(m['final'].get('norm_sqrt_v_corr', float('nan')) for m in c):+.3f} loss={st.mean(m['final']['test_loss'] for m in c):.4f}")
    print(f"  η={lr:.3g}: " + " | ".join(parts))
