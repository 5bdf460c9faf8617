"""The study's control plane under a simulated cluster: how many GPUs one driver keeps up with.

No training runs. Reporter processes stand for N GPUs, each training one array of K members that ends an
epoch every EPOCH_S seconds (CIFAR-10's 50,000 images at 300,000 member-images/s and K = 128: 21 s), each
GPU at its own phase. Their results (the rows a trainer reports: 10 metrics per member) reach one thread
that plays Ray Tune's event loop and calls the driver's hooks exactly as study/tune.py's callbacks do:
suggest (an array's members asked of Optuna and opened in MLflow), on_epoch, on_trial_end. The driver
(study/driver.py) is the real one, writing into real stores:

    sqlite   MLflow and Optuna in SQLite files (a study's default home)
    server   `mlflow server` backed by PostgreSQL, and Optuna on PostgreSQL (the cluster setup)

Measured for each N (one fresh study each): the time to open the N arrays (suggest: the Tune loop waits
for it), member-epochs/s offered and recorded, the writers' lag (age of the oldest member-epoch heard but
not yet recorded, sampled every 0.25 s), how long each callback held the Tune loop (p99, max), the driver
process's CPU per member-epoch by thread, and for `server` the CPU of the MLflow server and PostgreSQL.
At the end every record is counted in the stores (metric rows, Optuna intermediate values, finished runs
and trials): nothing may be lost or doubled. One closing line per backend:

    control plane (BACKEND): sustains N simulated GPUs at R member-images/s each

where sustaining means the lag stayed under one array-epoch (EPOCH_S) and the writers drained within one
array-epoch after the last report.

    python bench/control_plane.py --backend sqlite --gpus 1,8,64 [--members 128] [--epochs 4] [--json F]
    python bench/control_plane.py --backend server --postgres postgresql://USER:PASS@127.0.0.1:5432 ...
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

CIFAR_TRAIN = 50_000


def _rows(epoch: int, k: int, epoch_s: float, rng) -> str:
    return json.dumps([{"epoch": epoch, "train_loss": rng.random(), "test_loss": rng.random(),
                        "test_error": rng.random(), "weight_norm": 10 * rng.random(), "effective_lr": rng.random(),
                        "angular_update": rng.random(), "lr": 0.1, "epoch_time": epoch_s,
                        "wall_time": epoch * epoch_s, "diverged": 0.0, "ended_at": time.time()}
                       for _ in range(k)])


def reporter(gpus: list[int], phases: dict[int, float], t0: float, epochs: int, k: int, epoch_s: float,
             out: mp.Queue) -> None:
    """Stands for several GPUs: each reports epochs 1..`epochs` of its array at t0 + phase + e·epoch_s."""
    import random
    rng = random.Random(gpus[0] if gpus else 0)
    due = [(t0 + phases[g] + epoch_s, g, 1) for g in gpus]
    heapq.heapify(due)
    while due:
        at, g, e = heapq.heappop(due)
        wait = at - time.time()
        if wait > 0:
            time.sleep(wait)
        out.put(("epoch", g, {"epoch": e, "rows": _rows(e, k, epoch_s, rng), "node_id": f"node-{g % 64}",
                              "decay_counts": json.dumps({"decayed": 20, "not_decayed": 19}),
                              "environment": json.dumps({"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0"}),
                              "resumed_from_epoch": -1}, at))
        if e < epochs:
            heapq.heappush(due, (at + epoch_s, g, e + 1))
        else:
            out.put(("end", g, None, at))
    out.put(("done", None, None, time.time()))


def _spec(name: str, n: int, k: int, epochs: int, curve_every: int = 1):
    """n arrays of k members: n learning rates × k weight decays, one seed; past the spec's 10,000 grid points per
    arm (N = 256: 32,768 members), n / S learning rates × k weight decays × S seeds, S the least power of two that
    fits (the study then records one seed-averaged setting per S members instead of one per member)."""
    from study.spec import MAX_GRID_POINTS, spec_from_dict
    seeds = 1
    while max(2, n // seeds) * k > MAX_GRID_POINTS and n // seeds > 2:
        seeds *= 2
    return spec_from_dict({
        "name": name, "data": {"dataset": "synthetic", "synthetic_train": CIFAR_TRAIN, "synthetic_test": 10_000},
        "model": {"name": "resnet20"}, "train": {"epochs": epochs, "batch_size": 512, "device": "cpu"},
        "arms": [{"optimizer": "sgd", "decay": "coupled", "momentum": 0.9,
                  "lr": {"low": 0.01, "high": 1.0, "points": max(2, n // seeds)},
                  "weight_decay": {"low": 1e-5, "high": 1e-2, "points": k}}],
        "search": {"sampler": "grid", "seeds": list(range(seeds)), "metric": "test_loss"},
        "execution": {"members_per_trial": k}, "tracking": {"curve_every": curve_every}})


class Backend:
    """Fresh stores per study: (tracking URI, Optuna URL); counts records; reports the stores' CPU."""

    def __init__(self, kind: str, home: Path, postgres: str | None):
        self.kind, self.home, self.postgres = kind, home, postgres
        self.server = None
        self.dbs: list[str] = []

    def stores(self, name: str) -> tuple[str, str]:
        if self.kind == "sqlite":
            return f"sqlite:///{self.home / name / 'mlflow.db'}", f"sqlite:///{self.home / name / 'optuna.db'}"
        import psycopg
        tag = uuid.uuid4().hex[:8]
        self.dbs = [f"bench_cp_optuna_{tag}", f"bench_cp_mlflow_{tag}"]
        with psycopg.connect(f"{self.postgres}/postgres", autocommit=True) as admin:
            for db in self.dbs:
                admin.execute(f"CREATE DATABASE {db}")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        art = self.home / name / "artifacts"
        art.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{self.postgres}/{self.dbs[1]}",
             "--default-artifact-root", art.as_uri(), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        import urllib.request
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or self.server.poll() is not None:
                    raise RuntimeError("mlflow server did not start")
                time.sleep(0.2)
        return f"http://127.0.0.1:{port}", f"{self.postgres}/{self.dbs[0]}"

    def store_processes(self) -> list[psutil.Process]:
        if self.kind == "sqlite":
            return []
        procs = [psutil.Process(self.server.pid), *psutil.Process(self.server.pid).children(recursive=True)]
        procs += [p for p in psutil.process_iter(["name"]) if p.info["name"] and "postgres" in p.info["name"]]
        return procs

    def count(self, tracking: str, storage: str) -> dict:
        """Records in the stores: metric rows, finished member runs, Optuna intermediate values, complete trials."""
        # members' records only: the seed-averaged setting runs and trials (one per member here, with one seed)
        # are written too, and must not make the records look complete early
        sql = {"metrics": "SELECT count(*) FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
                          "WHERE t.key = 'role' AND t.value = 'member'",
               "runs_finished": "SELECT count(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                "WHERE t.key = 'role' AND t.value = 'member' AND r.status = 'FINISHED'",
               "intermediate": "SELECT count(*) FROM trial_intermediate_values",
               "trials_complete": "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                                  "WHERE t.state = 'COMPLETE' AND s.study_name NOT LIKE '%.settings'"}
        out = {}
        if self.kind == "sqlite":
            import sqlite3
            for key, q in sql.items():
                db = tracking if key in ("metrics", "runs_finished") else storage
                with sqlite3.connect(db.removeprefix("sqlite:///")) as con:
                    out[key] = con.execute(q).fetchone()[0]
        else:
            import psycopg
            for key, q in sql.items():
                db = self.dbs[1] if key in ("metrics", "runs_finished") else self.dbs[0]
                with psycopg.connect(f"{self.postgres}/{db}") as con:
                    out[key] = con.execute(q).fetchone()[0]
        return out

    def close(self) -> None:
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()
            self.server = None
        if self.dbs:
            import psycopg
            with psycopg.connect(f"{self.postgres}/postgres", autocommit=True) as admin:
                for db in self.dbs:
                    admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            self.dbs = []


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _thread_cpu() -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(math.ceil(q * len(xs))) - 1)]


class CPU:
    """CPU seconds of this process by thread (psutil's native ids) and of the stores' processes, between marks."""

    def __init__(self, backend: Backend):
        self.backend, self.me = backend, psutil.Process()
        self.mark()

    def mark(self) -> None:
        self.proc = sum(self.me.cpu_times()[:2])
        self.threads = _thread_cpu()
        self.stores = _cpu(self.backend.store_processes())

    def since(self, names: dict[str, int]) -> tuple[float, dict[str, float], float | None]:
        """(process, {thread name: seconds}, stores or None for in-process stores) since the last mark; marks."""
        proc, threads, stores = sum(self.me.cpu_times()[:2]), _thread_cpu(), _cpu(self.backend.store_processes())
        per = {name: threads[tid] - self.threads.get(tid, 0.0) for name, tid in names.items() if tid in threads}
        out = (proc - self.proc, {k: v for k, v in per.items() if v > 0.01},
               None if self.backend.kind == "sqlite" else stores - self.stores)
        self.mark()
        return out


def run_one(backend: Backend, n: int, k: int, epochs: int, epoch_s: float, reporters: int, log,
            name: str | None = None, keep: bool = False, curve_every: int = 1) -> dict:
    """One study of N simulated GPUs × one array of K members each, `epochs` epochs, through the real driver, in
    three phases measured apart: the arrays open (Tune asks the searcher for N trials; the writers open the
    member runs), the epochs stream (every GPU at its phase; measured until the writers have recorded all),
    the arrays end (on_trial_end for each; the writers finish the runs and tell Optuna). `keep`: the study is
    finished (as `study run` ends one) and its stores are left in place."""
    from study.driver import Driver, Stores

    name = name or f"cp-{backend.kind}-{n}"
    (backend.home / name).mkdir(parents=True, exist_ok=True)
    tracking, storage = backend.stores(name)
    spec = _spec(name, n, k, epochs, curve_every)
    t = time.time()
    driver = Driver(spec, Stores(backend.home, tracking, storage), out=open(os.devnull, "w"))
    start_s = time.time() - t
    threads = {"tune-loop": threading.get_native_id()}  # this thread plays Tune's loop in phases 1 and 3
    threads.update({th.name: th.native_id for th in threading.enumerate() if th.name in
                    ("mlflow-writer", "optuna-writer", "study-lease")})
    cpu = CPU(backend)
    holds = {"suggest": [], "on_epoch": [], "on_trial_end": []}

    # 1. the arrays open: Tune asks its searcher for a trial config per GPU
    t = time.time()
    for g in range(n):
        h = time.perf_counter()
        config = driver.suggest(f"trial-{g}")
        holds["suggest"].append(time.perf_counter() - h)
        assert config is not None and len(config["spec"]["members"]) == k, "the spec holds N arrays of K"
    suggest_s = time.time() - t
    driver.drain()
    open_s = time.time() - t
    open_cpu = cpu.since(threads)
    log(f"  N={n}: driver start {start_s:.1f} s; {n} arrays asked in {suggest_s:.1f} s, their {n * k} member runs "
        f"open after {open_s:.1f} s")

    # 2. the epochs stream
    rng = __import__("random").Random(n)
    phases = {g: rng.uniform(0, epoch_s) for g in range(n)}
    q: mp.Queue = mp.get_context("spawn").Queue()
    t0 = time.time() + 1.0
    procs = [mp.get_context("spawn").Process(target=reporter, args=(list(range(r, n, reporters)), phases, t0, epochs,
                                                                     k, epoch_s, q), daemon=True)
             for r in range(min(reporters, n))]
    for p in procs:
        p.start()
    heard: list[tuple[float, int]] = []  # (time heard, cumulative member-epochs heard)
    offered = [0]
    lag: list[tuple[float, float, int]] = []  # (t, lag s, member-epochs waiting)
    stop = threading.Event()

    def written() -> int:  # member-epochs in both stores (a driver without an Optuna writer reports in the hook)
        return min(driver.writer.epochs_written, getattr(driver, "curves_recorded", driver.writer.epochs_written))

    def sampler():
        i = 0
        while not stop.is_set():
            now, w = time.time(), written()
            while i < len(heard) and heard[i][1] <= w:
                i += 1
            lag.append((now - t0, now - heard[i][0] if i < len(heard) else 0.0, offered[0] - w))
            stop.wait(0.25)

    s_thread = threading.Thread(target=sampler, daemon=True)
    s_thread.start()
    ended, finished, epoch_cpu = [], 0, []
    while finished < len(procs):  # Ray Tune's event loop: one thread calls every hook
        kind, g, result, _ = q.get()
        if kind == "done":
            finished += 1
        elif kind == "epoch":
            h, c = time.perf_counter(), time.thread_time()
            driver.on_epoch(f"trial-{g}", result)
            holds["on_epoch"].append(time.perf_counter() - h)
            epoch_cpu.append(time.thread_time() - c)  # the hook's own work; the rest of its hold is waiting for the GIL
            offered[0] += k
            heard.append((time.time(), offered[0]))
        else:
            ended.append(g)
    t_last = time.time()
    driver.drain()
    drain_s = time.time() - t_last
    stop.set()
    s_thread.join()
    stream_s = time.time() - t0
    stream_cpu = cpu.since(threads)
    for p in procs:
        p.join(10)

    # 3. the arrays end
    t = time.time()
    for g in ended:
        h = time.perf_counter()
        driver.on_trial_end(f"trial-{g}", None)
        holds["on_trial_end"].append(time.perf_counter() - h)
    driver.drain()
    close_s = time.time() - t
    close_cpu = cpu.since(threads)

    errors = driver.outcome.failed
    member_epochs = n * k * epochs
    rss_mb = psutil.Process().memory_info().rss / 2**20
    if keep:
        driver.tracker.finish_study("FINISHED", {"members_done": driver.outcome.done, "members_failed": len(errors)})
    driver.writer.close()
    driver.optuna.close()
    driver.search.lease.release()
    counts = backend.count(tracking, storage)
    if not keep:
        backend.close()
    steady = [x for x in lag if x[0] >= epoch_s]
    all_holds = holds["on_epoch"] + holds["on_trial_end"]

    def per(c, count):  # CPU ms per unit: process, by thread, stores
        return {"process": c[0] / count * 1e3, "threads": {t: v / count * 1e3 for t, v in c[1].items()},
                "stores": None if c[2] is None else c[2] / count * 1e3}

    row = {
        "backend": backend.kind, "gpus": n, "members_per_array": k, "epochs": epochs, "epoch_s": epoch_s,
        "driver_start_s": start_s, "suggest_s": suggest_s, "open_s": open_s,
        "offered_member_epochs_per_s": n * k / epoch_s, "stream_s": stream_s, "drain_s": drain_s, "close_s": close_s,
        "lag_max_s": max((x[1] for x in lag), default=0.0),
        "lag_steady_max_s": max((x[1] for x in steady), default=0.0),
        "waiting_max": max((x[2] for x in lag), default=0),
        "hold_p99_ms": _pct(all_holds, 0.99) * 1e3, "hold_max_ms": max(all_holds, default=0.0) * 1e3,
        "epoch_hold_p99_ms": _pct(holds["on_epoch"], 0.99) * 1e3,
        "epoch_hook_cpu_p99_ms": _pct(epoch_cpu, 0.99) * 1e3,
        "end_hold_max_ms": max(holds["on_trial_end"], default=0.0) * 1e3,
        "suggest_hold_max_ms": max(holds["suggest"]) * 1e3,
        "cpu_ms_per_member_opened": per(open_cpu, n * k),
        "cpu_ms_per_member_epoch": per(stream_cpu, member_epochs),
        "cpu_ms_per_member_closed": per(close_cpu, n * k),
        "records": counts, "failed_members": len(errors), "driver_rss_mb": rss_mb, "tracking": tracking,
        "storage": storage,
        "expected": {"metrics": member_epochs * 10, "runs_finished": n * k,
                     "intermediate": n * k * sum(e % curve_every == 0 or e == epochs for e in range(1, epochs + 1)),
                     "trials_complete": n * k},
    }
    # every epoch row (10 metrics) and curve point, every finished run and trial; the runs' log10 metrics come extra
    row["complete"] = all(counts[key] >= v for key, v in row["expected"].items())
    row["sustained"] = row["lag_max_s"] < epoch_s and drain_s < epoch_s and row["complete"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("sqlite", "server"), default="sqlite")
    ap.add_argument("--gpus", default="1,8,64", help="simulated GPU counts, comma-separated")
    ap.add_argument("--members", type=int, default=128, help="members per array (K)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs each array reports")
    ap.add_argument("--rate", type=float, default=300_000, help="member-images/s per simulated GPU")
    ap.add_argument("--reporters", type=int, default=2, help="reporter processes standing for the GPUs")
    ap.add_argument("--postgres", default=os.environ.get("STUDY_TEST_POSTGRES"),
                    help="postgresql://USER:PASS@HOST:PORT for --backend server")
    ap.add_argument("--curve-every", type=int, default=1,
                    help="tracking.curve_every: epochs between Optuna learning-curve points (the last always)")
    ap.add_argument("--json", help="write the rows here (rewritten after each N)")
    a = ap.parse_args(argv)
    try:
        gpus = [int(x) for x in a.gpus.split(",")]
        if not gpus or min(gpus) < 1:
            raise ValueError
    except ValueError:
        ap.error(f"invalid --gpus: expected positive integers like 1,8,64, got {a.gpus!r}")
    if a.backend == "server" and not a.postgres:
        ap.error("invalid --postgres: --backend server needs postgresql://USER:PASS@HOST:PORT (or STUDY_TEST_POSTGRES)")
    if a.members < 1 or a.epochs < 1 or a.rate <= 0 or a.reporters < 1 or a.curve_every < 1:
        ap.error("invalid --members/--epochs/--rate/--reporters/--curve-every: each must be positive")
    epoch_s = CIFAR_TRAIN * a.members / a.rate
    log = lambda s: print(s, flush=True)  # noqa: E731
    import mlflow
    import optuna
    import torch

    from study.environment import cpu_model
    log(f"control plane ({a.backend}): {cpu_model() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, mlflow {mlflow.__version__}, optuna {optuna.__version__}, "
        f"torch {torch.__version__}; K={a.members}, one array-epoch per GPU every {epoch_s:.1f} s "
        f"({a.rate:,.0f} member-images/s on {CIFAR_TRAIN:,} images), {a.epochs} epochs, a learning-curve point every {a.curve_every} epoch(s) and the last")
    os.environ.setdefault("STUDY_LOG_INTERVAL_S", "10")
    rows, best = [], 0
    with tempfile.TemporaryDirectory(prefix="control-plane-") as tmp:
        for n in gpus:
            backend = Backend(a.backend, Path(tmp), a.postgres)
            try:
                row = run_one(backend, n, a.members, a.epochs, epoch_s, a.reporters, log, curve_every=a.curve_every)
            finally:
                backend.close()
            rows.append(row)
            e = row["cpu_ms_per_member_epoch"]
            threads = ", ".join(f"{t} {v:.2f}" for t, v in sorted(e["threads"].items()))
            log(f"  N={n}: offered {row['offered_member_epochs_per_s']:.0f} member-epochs/s; lag max "
                f"{row['lag_max_s']:.1f} s, drained {row['drain_s']:.1f} s after the last report; hooks held Tune's loop "
                f"p99 {row['hold_p99_ms']:.1f} ms, max {row['hold_max_ms']:.1f} ms (on_epoch's own CPU p99 "
                f"{row['epoch_hook_cpu_p99_ms']:.1f} ms; suggest: max "
                f"{row['suggest_hold_max_ms'] / 1e3:.1f} s per array); CPU per member-epoch {e['process']:.2f} ms "
                f"({threads})" + (f", stores {e['stores']:.2f} ms" if e["stores"] is not None else "")
                + f"; per member opened {row['cpu_ms_per_member_opened']['process']:.1f} ms, closed "
                f"{row['cpu_ms_per_member_closed']['process']:.1f} ms"
                + (f" (stores {row['cpu_ms_per_member_opened']['stores']:.1f} and "
                   f"{row['cpu_ms_per_member_closed']['stores']:.1f})" if e["stores"] is not None else "")
                + f"; records {'complete' if row['complete'] else 'INCOMPLETE ' + json.dumps(row['records'])}"
                + f"; {'sustained' if row['sustained'] else 'NOT sustained'}")
            if row["sustained"]:
                best = max(best, n)
            if a.json:
                Path(a.json).write_text(json.dumps(rows, indent=1))
    log(f"control plane ({a.backend}): sustains {best} simulated GPUs at {a.rate:,.0f} member-images/s each"
        + ("" if best else " (none of those tried)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
