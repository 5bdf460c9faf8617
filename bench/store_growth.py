"""How the records and their readers grow with a study: stores of M members × E epochs, built by the real driver
(bench/control_plane.py's simulated cluster, epochs reported faster than the writers take them, so that the
writers batch), then the driver's memory, each store's size, and the time of `study list`, `study export` and
`study resume` (a finished study: it reads everything and trains nothing) on them.

    python bench/store_growth.py --members 1000,3000,10000 --epochs 20 [--json F]

Each reader runs as a user runs it (a fresh process, `--home` on the study's home); the times include Python's
start and imports (about 4 s here), so the growth is read from the differences between sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from control_plane import Backend, run_one  # noqa: E402


def _timed(args: list[str], home: Path) -> tuple[float, int, str]:
    t = time.time()
    out = subprocess.run([sys.executable, "-m", "study.cli", "--home", str(home), *args], capture_output=True,
                         text=True, timeout=3600)
    return time.time() - t, out.returncode, (out.stderr or out.stdout).strip().splitlines()[-1:][0][:200] if (
        out.stderr or out.stdout).strip() else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", default="1000,3000,10000")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--array", type=int, default=125, help="members per array")
    ap.add_argument("--epoch-s", type=float, default=2.0, help="seconds between an array's reported epochs")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.members.split(",")]
    if any(m % a.array for m in sizes):
        ap.error(f"invalid --members: each must be a multiple of --array {a.array}, got {a.members}")
    os.environ.setdefault("STUDY_LOG_INTERVAL_S", "10")
    rows = []
    log = lambda s: print(s, flush=True)  # noqa: E731
    for m in sizes:
        with tempfile.TemporaryDirectory(prefix="store-growth-") as tmp:
            home = Path(tmp)
            backend = Backend("sqlite", home, None)
            name = f"growth{m}"
            t = time.time()
            built = run_one(backend, m // a.array, a.array, a.epochs, a.epoch_s, 2, log, name=name, keep=True)
            build_s = time.time() - t
            ok = built["complete"]
            # the stores where `study` looks for them under --home: MLflow's file at the home, Optuna's in the study's folder
            (home / name / "mlflow.db").rename(home / "mlflow.db")
            row = {"members": m, "epochs": a.epochs, "member_epochs": m * a.epochs, "build_s": build_s,
                   "records_complete": ok, "records": built["records"], "driver_rss_mb": built["driver_rss_mb"],
                   "mlflow_db_mb": (home / "mlflow.db").stat().st_size / 2**20,
                   "optuna_db_mb": (home / name / "optuna.db").stat().st_size / 2**20}
            readers = (("list", ["list"]), ("export", ["export", name, "--out", str(home / "export")]),
                       ("resume", ["resume", name]))
            for what, args in readers:
                row[f"{what}_s"], rc, last = _timed(args, home)
                row[f"{what}_rc"] = rc
                if rc:
                    row[f"{what}_error"] = last
            rows.append(row)
            log(f"{m} members × {a.epochs} epochs: built in {build_s:.0f} s (records "
                f"{'complete' if ok else 'INCOMPLETE'}), driver RSS {row['driver_rss_mb']:.0f} MB, mlflow.db "
                f"{row['mlflow_db_mb']:.1f} MB, optuna.db {row['optuna_db_mb']:.1f} MB; study list {row['list_s']:.1f} s, "
                f"export {row['export_s']:.1f} s, resume {row['resume_s']:.1f} s"
                + "".join(f"; {w} exit {row[f'{w}_rc']}: {row[f'{w}_error']}" for w in ("list", "export", "resume")
                          if row[f"{w}_rc"]))
            if a.json:
                Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
