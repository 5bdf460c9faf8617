"""The `study` command: train | validate | run | resume | list | ui | export | recommend | bench.

Owns argument parsing and the messages users read; the work is the driver's (run, resume), the
report's (export) and the engine's (train, bench). Bad specs and flags stop before anything starts,
with one line naming the field and the value and exit code 2. Importing this module loads no torch,
Ray, Optuna or MLflow: each command imports what it uses.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from .datasets import DATASETS, DataError, split_sizes
from .registry import MAX_DEPTH, MODEL_NAMES, known_model
from .environment import SettingError, check_settings
from .spec import (HARD_LIMITS, LARGE_MEMBER_EPOCHS, LARGE_MEMBERS, NAME_RE, SpecError, check_cost, check_data_path_flag,
                   data_warnings, grid_members, load_spec, shrink_for_smoke, timescale_warnings, total_steps)
from .stores import StoreError, default_storage, default_tracking_uri, masked, why_no_file

EXIT_USAGE = 2


def home_dir(args) -> Path:
    home = Path(args.home or os.environ.get("STUDY_HOME") or Path.home() / "studies").expanduser().resolve()
    odd = sorted({c for c in "#?%" if c in str(home)})
    if odd:  # the stores under a home are sqlite:/// URLs, where these start a fragment, a query or an escape
        raise SpecError(f"invalid {home_source(args)}: a home's stores are SQLite URLs, which cannot hold "
                        f"{' or '.join(repr(c) for c in odd)} in a path; choose another folder, but got {home}")
    if home.exists() and not home.is_dir():
        raise SpecError(f"invalid {home_source(args)}: {home} is a file, not a folder")
    return home


def home_source(args) -> str:
    """What set the home, for a message that blames it: --home, STUDY_HOME, or the default."""
    return "--home" if args.home else "STUDY_HOME" if os.environ.get("STUDY_HOME") else "--home (default ~/studies)"


def check_name(name: str) -> str:
    """A study name given on the command line (resume, export, recommend): the rule of a spec's name."""
    if not NAME_RE.match(name) or ".." in name:
        raise SpecError(f"invalid name: a study name uses letters, digits, '_', '.', '-' (at most 100), "
                        f"but got name={name[:60]!r}")
    return name


def _fail(msg: str) -> int:
    print(f"study: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


# --------------------------------------------------------------------------- study train

AUTO_BOOL = {"auto": None, "true": True, "false": False}  # --channels-last, --cudnn-benchmark -> the spec's value

def _check_size(spec, allow_large: bool) -> None:
    """Before training (train, run): the study's cost refused past the stated size, and what the data makes of
    the spec's steps said on stderr."""
    n = split_sizes(spec.data)[0]
    check_cost(spec, n, allow_large)
    for w in data_warnings(spec, n):
        print(f"warning: {w}", file=sys.stderr)


def _fields_for_run_only(spec) -> list[str]:
    """The spec's settings, other than their defaults, that only `study run` acts on."""
    from .spec import ExecutionSpec, SearchSpec, TrackingSpec

    out = [f"execution.{k}" for k in ("cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures")
           if getattr(spec.execution, k) != getattr(ExecutionSpec(), k)]
    out += ["search.refine"] if spec.search.refine != SearchSpec().refine else []
    out += ["tracking.experiment"] if spec.tracking.experiment != TrackingSpec().experiment else []
    return out


def cmd_train(args) -> int:
    import torch

    from .data import load_spec_data
    from .engine import ArrayConfig, ArrayTrainer, pack_arrays, resolve_device

    import dataclasses

    spec = load_spec(args.spec, args.data_path, args.set)
    overrides = {}
    if getattr(args, "precision", None):
        overrides["precision"] = args.precision
    if getattr(args, "channels_last", None):
        overrides["channels_last"] = AUTO_BOOL[args.channels_last]
    if getattr(args, "cudnn_benchmark", None):
        overrides["cudnn_benchmark"] = AUTO_BOOL[args.cudnn_benchmark]
    if getattr(args, "compile", None) is not None:
        overrides["compile"] = args.compile
    if overrides:
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, **overrides))
    check_output(args.out, "--out")          # before training: results are never lost to a bad path
    _check_size(spec, args.allow_large)
    members = grid_members(spec)
    if args.device == "cuda":
        _refuse_cuda_flag()
    if not args.device:
        check_local_device(spec, "study train trains here")
    device = resolve_device(args.device or spec.train.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    d = spec.data
    data = load_spec_data(d)
    arrays = pack_arrays(members, spec.execution.members_per_trial)
    for_run = _fields_for_run_only(spec)
    if for_run:  # the spec serves both commands: say what this one leaves to `study run`
        print(f"note: study train trains here, one array after another, and records nothing in MLflow or Optuna; "
              f"left to `study run`: {', '.join(for_run)}", file=sys.stderr)
    print(f"study train: {len(members)} members in {len(arrays)} arrays on {device} "
          f"({spec.model.name}, {d.dataset}: {len(data.train_y)} train / {len(data.test_y)} test images, "
          f"{spec.train.epochs} epochs)")
    torch.manual_seed(spec.train.seed)
    results, t0 = [], time.time()
    for i, array in enumerate(arrays, 1):
        trainer = ArrayTrainer(array, data, ArrayConfig(spec.model, spec.train, spec.data), device)
        c, st = trainer.decay_counts, trainer.settings()
        print(f"array {i}/{len(arrays)}: {array[0].arm}, {len(array)} members; decays {c['decayed_tensors']} "
              f"tensors ({c['decayed_params']} params), never {c['no_decay_tensors']} ({c['no_decay_params']}); "
              f"{st['precision']}, channels_last={st['channels_last']}, cudnn_benchmark={st['cudnn_benchmark']}, "
              f"compile={st['compile']}")
        print(f"{'epoch':>5} {'member':>6} {'lr':>9} {'wd':>9} {'seed':>4} {'train_loss':>10} {'test_err':>8} "
              f"{'|w|':>8} {'angle':>8} {'time':>6}")

        def report(epoch, rows, array=array):
            for k, (m, r) in enumerate(zip(array, rows)):
                flag = " diverged" if r["diverged"] else ""
                print(f"{epoch:>5} {k:>6} {m.lr:>9.3g} {m.weight_decay:>9.3g} {m.seed:>4} {r['train_loss']:>10.4f} "
                      f"{r['test_error']:>8.4f} {r['weight_norm']:>8.2f} {r['angular_update']:>8.4f} "
                      f"{r['wall_time']:>6.1f}{flag}", flush=True)

        results.extend(trainer.run(report))
        if trainer.compiled:
            print(f"array {i}/{len(arrays)}: first compiled step (tracing and code generation, or a cache hit) "
                  f"took {trainer.compile_s:.1f} s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"spec": spec.name, "device": str(device), "metric": spec.search.metric,
                               "members": results}, indent=1))
    print(f"wrote {len(results)} members to {out} in {time.time() - t0:.1f} s")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB (torch.cuda.max_memory_allocated)")
    else:
        import resource
        print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (process peak RSS)")
    if spec.arms:  # grids trained here: their landscape, from the results just written
        from .landscape import landscapes
        from .report import summary_lines

        metric = spec.search.metric
        rows = [{**{k: r[k] for k in ("optimizer", "decay", "lr", "weight_decay", "seed")},
                 "error": r["final"].get(metric, float("nan")), "diverged": bool(r["final"].get("diverged"))}
                for r in results]
        print(f"landscape ({metric}):")
        print("\n".join(summary_lines(landscapes(rows, metric=metric))))
    return 0


# --------------------------------------------------------------------------- study validate

def cmd_validate(args) -> int:
    spec = load_spec(args.spec, args.data_path, args.set)
    if args.smoke:
        spec = shrink_for_smoke(spec)
    n, n_test = split_sizes(spec.data)
    cost = check_cost(spec, n, args.allow_large)
    print(f"{args.spec}: valid. Study {spec.name!r}: {len(spec.arms)} arms, {cost['members']:,} members, "
          f"{spec.train.epochs:,} epochs of {n:,} images (test {n_test:,}) = {total_steps(spec, n):,} steps per member; "
          f"cost {cost['member_epochs']:,} member-epochs, {cost['member_images']:.3g} member-images")
    for w in data_warnings(spec, n) + timescale_warnings(spec, n):
        print(f"warning: {w}")
    if spec.train.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("warning: train.device is cuda and this machine has no CUDA device: `study run` here refuses it; "
                  "it runs on a cluster with GPU workers (--address)")
    return 0


def check_output(path: str, flag: str, folder: bool = False) -> Path:
    """An output named on the command line, checked before any work: a file's folder must exist or be creatable
    and be writable, and the file must not be a folder; a folder must be one, or creatable."""
    p = Path(path).expanduser()
    target = p if folder else p.parent
    if not folder and p.is_dir():
        raise SpecError(f"invalid {flag}: {path} is a folder; name the file to write, but got {flag.lstrip('-')}={path!r}")
    if folder and p.exists() and not p.is_dir():
        raise SpecError(f"invalid {flag}: {path} is a file, not a folder, but got {flag.lstrip('-')}={path!r}")
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    why = "not a folder" if not probe.is_dir() else None
    if why is None:   # a real try (root passes every permission check, and /proc refuses files anyway)
        import tempfile

        try:
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError as e:
            why = e.strerror or type(e).__name__
    if why:
        raise SpecError(f"invalid {flag}: cannot write under {probe} ({why}), but got {flag.lstrip('-')}={path!r}")
    return p


def check_local_device(spec, where: str) -> None:
    """train.device: cuda on a machine whose torch sees no CUDA device is refused before anything is written
    (a local Ray, `study train`; `study validate` warns); on a cluster (--address) its workers decide."""
    if spec.train.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise SpecError(f"invalid train.device: cuda, but torch sees no CUDA device on this machine ({where}); "
                        f"use device: auto or cpu, or run on a cluster with --address, but got device='cuda'")


def _refuse_cuda_flag() -> None:
    import torch

    if not torch.cuda.is_available():
        raise SpecError("invalid --device: cuda, but torch sees no CUDA device on this machine; use --device cpu "
                        "(or leave it out), but got device='cuda'")


def check_address(address: str | None) -> None:
    """Refuse an unreachable --address in seconds, before Ray would retry for minutes."""
    if not address:
        return
    if address == "auto":   # Ray's own lookup: the address the last `ray start` on this machine wrote down
        base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"   # Ray's own temp folder
        current = Path(base) / "ray" / "ray_current_cluster"
        try:
            address = current.read_text().strip()
        except OSError:
            raise SpecError("invalid --address: auto, but no Ray cluster was started on this machine "
                            "(`ray start --head` starts one), and no address was given") from None
        if not address:
            raise SpecError(f"invalid --address: auto, but {current} names no cluster")
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if host.startswith("[") and host.endswith("]"):  # an IPv6 address in brackets: [::1]:6379
        host = host[1:-1]
    if not host or not port.isdigit():
        raise SpecError(f"invalid --address: expected HOST:PORT (or ray://HOST:PORT, auto), but got address={address!r}")
    if not 1 <= int(port) <= 65535:
        raise SpecError(f"invalid --address: a TCP port lies in [1, 65535], but got port {port} in address={address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as e:
        raise SpecError(f"invalid --address: no Ray cluster answers at {address} ({e.strerror or e})") from None


# --------------------------------------------------------------------------- study run / resume

_NOTED: set[str] = set()  # MLFLOW_TRACKING_URI values already pointed out in this process


def tracking_uri(args, home: Path) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the SQLite file under the studies' home. Where a --home
    was given but MLFLOW_TRACKING_URI decides, one line says so: the home's own store is not the one read."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if (not args.tracking_uri and env and getattr(args, "home", None) and env not in _NOTED
            and env != default_tracking_uri(home)):
        _NOTED.add(env)
        print(f"note: the records are in MLFLOW_TRACKING_URI={masked(env)}, not {default_tracking_uri(home)} "
              f"(--tracking-uri or unsetting MLFLOW_TRACKING_URI chooses otherwise)", file=sys.stderr)
    return args.tracking_uri or env or default_tracking_uri(home)


def cmd_run(args) -> int:
    spec = load_spec(args.spec, args.data_path, args.set)
    if args.smoke:
        spec = shrink_for_smoke(spec)
    _check_size(spec, args.allow_large)
    return _drive(args, spec, resume=False)


def cmd_resume(args) -> int:
    from .tracking import recorded_spec, recorded_storage

    home = home_dir(args)
    try:  # the resolved spec the study started with: same data, same --smoke shrinking, same everything
        spec = recorded_spec(tracking_uri(args, home), check_name(args.name))
        if args.storage is None:  # the Optuna storage it was started with, when that was not the home's default
            args.storage = recorded_storage(tracking_uri(args, home), spec.name)
    except LookupError as e:
        raise SpecError(str(e).strip("'\"")) from None
    return _drive(args, spec, resume=True)


def _drive(args, spec, resume: bool) -> int:
    from .driver import Driver, Stores, catch_interrupts

    check_address(args.address)
    home = home_dir(args)
    if args.address is None:
        check_local_device(spec, "a local Ray, no --address")
    if args.address is None and spec.execution.cpus_per_trial > (os.cpu_count() or 1):
        raise SpecError(f"invalid execution.cpus_per_trial: a local Ray on this machine has {os.cpu_count()} CPUs, "
                        f"but got cpus_per_trial={spec.execution.cpus_per_trial}")
    stores = Stores.default(home, spec.name, tracking_uri(args, home), args.storage)
    # the records live in MLflow and Optuna: no Tune CSV/JSON/TensorBoard files, no snapshot nagging; Ctrl-C
    # and SIGTERM reach the driver (not Tune's handler), which records what finished and says how to resume
    for k, v in (("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1"), ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0"),
                 ("RAY_AIR_NEW_OUTPUT", "0"), ("TUNE_WARN_THRESHOLD_S", "5"), ("TUNE_DISABLE_SIGINT_HANDLER", "1")):
        os.environ.setdefault(k, v)

    import faulthandler

    try:
        faulthandler.enable()  # a crash in native code (Ray, torch, SQLite) says where, thread by thread
    except (AttributeError, OSError, ValueError):  # stderr is no file (called in-process, output captured)
        pass

    catch_interrupts()  # SIGTERM as Ctrl-C: a KeyboardInterrupt, which the driver turns into its clean stop
    hint = f" --home {home}" if args.home else ""
    try:
        driver = Driver(spec, stores, resume, args.address)  # every check, then the records are opened
        print(f"study {spec.name}: {driver.search.total} members in arrays of {spec.execution.members_per_trial}; "
              f"records: MLflow {stores.tracking}, Optuna {stores.storage}", file=sys.stderr, flush=True)
        print(f"study ui{hint}   # browse it while it runs (MLflow; add --study {spec.name} for optuna-dashboard)",
              file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while the records were being opened: nothing was trained
        print(f"interrupted before training started; nothing was trained: run it again (or `study resume "
              f"{spec.name}{hint}` if the name now has records)", file=sys.stderr)
        return 130
    outcome = driver.run()
    failed = f", {len(outcome.failed)} failed" if outcome.failed else ""
    print(f"\nstudy {spec.name}: {outcome.done}/{outcome.total} members recorded{failed} in {outcome.seconds:.0f} s")
    for reason, n in sorted(_count(outcome.failed.values()).items(), key=lambda kv: -kv[1])[:5]:
        print(f"  {n} failed: {reason}")
    for arm, err in sorted(outcome.best.items()):
        print(f"  best single-seed {spec.search.metric} of {arm}: {err:.4g} (one member, one seed)")
    study_dir = home / spec.name
    if outcome.complete and not outcome.interrupted and spec.arms:  # Ctrl-C meant stop: resume exports
        from .report import export, summary_lines
        lands, _ = export(stores.tracking, spec.name, study_dir / "export", metric=spec.search.metric)
        seeds = spec.search.seeds
        over = f"mean {spec.search.metric} over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 \
            else f"{spec.search.metric} of seed {seeds[0]}"
        print(f"landscape of the {over} (exported to {study_dir / 'export'}; also on the parent run in MLflow):")
        print("\n".join(summary_lines(lands)))
    print(f"records: MLflow {stores.tracking} (experiment {spec.experiment!r}), Optuna {stores.storage}")
    print(f"next:\n  study ui{hint}                     # browse the runs in MLflow\n"
          f"  study export {spec.name}{hint} --out {study_dir / 'export'}   # heatmaps, slopes, report")
    if outcome.interrupted:
        if outcome.error:  # it had stopped on an error already, and was interrupted while closing its records
            print(f"study: error: the study stopped: {outcome.error}", file=sys.stderr)
        print(f"interrupted; finish with: study resume {spec.name}{hint}", file=sys.stderr)
        return 130
    if outcome.error:
        print(f"study: error: the study stopped: {outcome.error}; what was recorded is kept; "
              f"finish with: study resume {spec.name}{hint}", file=sys.stderr)
        return 1
    if not outcome.complete:
        print(f"  study resume {spec.name}{hint}   # {outcome.total - outcome.done} members are missing; "
              f"resume trains them (failed ones again)")
        return 1
    return 0


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


# --------------------------------------------------------------------------- study list

def cmd_list(args) -> int:
    """The studies of a home (or of --tracking-uri): members done of planned, failed, running or not, last update."""
    from .stores import check_mlflow_file, check_tracking_uri, sqlite_path
    from .tracking import environment_line, list_studies

    home = home_dir(args)
    tracking = tracking_uri(args, home)
    db = sqlite_path(tracking)
    if args.tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        if not home.is_dir():
            raise SpecError(f"invalid {home_source(args)}: {home} does not exist (no studies there); "
                            f"`study run SPEC --home {home}` starts one")
        if db.exists() and not db.is_file():
            raise SpecError(f"invalid {home_source(args)}: no MLflow store in {home} ({why_no_file(db)})")
        if not db.is_file():
            print(f"no studies in {home} yet (no MLflow store {db.name}); start one with `study run SPEC`")
            return 0
    elif db is not None and not db.is_file():
        raise SpecError(f"invalid --tracking-uri: no MLflow store at {db} ({why_no_file(db)})")
    if db is not None and not check_mlflow_file(db):   # read-only: an empty file stays empty
        print(f"no studies in {tracking} yet (the file is empty); start one with `study run SPEC`")
        return 0
    elif db is None:
        check_tracking_uri(tracking)  # a server that does not answer is one line, not 15 minutes of retries
    rows = list_studies(tracking)
    if not rows:
        print(f"no studies in {tracking} yet; start one with `study run SPEC`")
        return 0
    for row in rows:
        row["state"] = _state(row, args.storage or default_storage(home, row["name"]))
    rows.sort(key=lambda r: -(r["updated"] or 0))
    table = [("NAME", "MEMBERS", "FAILED", "STATE", "LAST UPDATE", "COMPUTED WITH")]
    for r in rows:
        members = f"{r['done']}/{r['planned'] if r['planned'] is not None else '?'}"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["updated"])) if r["updated"] else "-"
        table.append((r["name"], members, str(r["failed"]), r["state"], when, environment_line(r["environment"])))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    print(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'} in {tracking}:")
    for row in table:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5])
    return 0


def _state(row: dict, storage: str) -> str:
    """What a study is doing: its parent run's status, and for a RUNNING one whether its driver lease is held."""
    from .search import read_lease

    status, name = row["status"], row["name"]
    complete = row["planned"] is not None and row["done"] >= row["planned"]
    if status == "RUNNING":
        held, who = read_lease(storage, name)
        if held:
            training = f", {row['training']} members training" if row["training"] else ""
            return f"running ({who}{training})"
        if held is None:
            return f"running? ({who})"
        return f"stopped: its driver is gone ({who}); study resume {name}"
    if status == "FINISHED":
        return "finished" if complete else "finished, incomplete"
    if status == "KILLED":
        return f"interrupted; study resume {name}"
    if status == "FAILED":
        return f"stopped with an error; study resume {name}"
    return status.lower()


# --------------------------------------------------------------------------- study ui

def _check_port(host: str, port: int, flag: str = "--port") -> None:
    """The port is valid and free on `host`, or one line and exit 2, before any server starts."""
    if not 1 <= port <= 65535:
        raise SpecError(f"invalid {flag}: a TCP port lies in [1, 65535], but got port={port}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise SpecError(f"invalid --host: {host[:60]!r} is no address of this machine "
                        f"({getattr(e, 'strerror', None) or e})") from None
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # as the servers bind: connections of a UI just stopped (TIME_WAIT) do not make the port taken
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:  # a valid address, but none of this machine's interfaces has it
                raise SpecError(f"invalid --host: {host} is not an address of this machine ({e.strerror}); "
                                f"use 127.0.0.1 (or 0.0.0.0 for every interface)") from None
            raise SpecError(f"invalid {flag}: {host}:{port} is not free ({e.strerror}); choose another port") from None


def _wait_answering(url: str, procs, stopping=(), timeout: float = 180.0) -> bool:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if stopping or any(p.poll() is not None for p in procs):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


# MLflow 3.x's UI opens an experiment on the view of the browser's "workflow type": the `workflowType` query
# parameter of the page, else localStorage['mlflow.workflowType_v1'] (set by the sidebar's GenAI / Model
# training switch), else "genai", whose landing page is an empty Traces overview. The experiment tag
# mlflow.experimentKind is not read for it. So the UI `study ui` serves makes "Model training" the default
# of a browser that has not chosen: one line in the page's <head>; the switch still works and is remembered.
WORKFLOW_KEY = "mlflow.workflowType_v1"
WORKFLOW_DEFAULT = (f"<script>try{{if(localStorage.getItem('{WORKFLOW_KEY}')===null)localStorage.setItem("
                    f"'{WORKFLOW_KEY}','\"machine_learning\"')}}catch(e){{}}</script>").encode()
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
              "trailer", "transfer-encoding", "upgrade"}


def _ui_proxy(host: str, port: int, upstream_port: int):
    """A threaded HTTP server on host:port passing every request to the MLflow server on 127.0.0.1:upstream_port
    unchanged (Host and Origin headers included, so MLflow's own host and CORS checks see what the browser sent),
    except the app's page itself, which gets WORKFLOW_DEFAULT. Each response ends its connection."""
    import http.client
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):  # no access log on the terminal
            pass

        def _forward(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else None
            page = self.command == "GET" and self.path.split("?")[0] in ("/", "/index.html")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP
                       and not (page and k.lower() == "accept-encoding")}  # the page as plain text, to add a line
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=600)
            try:
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                except OSError:
                    self.send_error(502, "the MLflow server does not answer (yet)")
                    return
                page = page and resp.getheader("Content-Type", "").startswith("text/html")
                data = resp.read().replace(b"<head>", b"<head>" + WORKFLOW_DEFAULT, 1) if page else None
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP and not (page and k.lower() == "content-length"):
                        self.send_header(k, v)
                if page:
                    self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                if page:
                    self.wfile.write(data)
                elif self.command != "HEAD":
                    while chunk := resp.read1(1 << 16):  # streamed: artifacts, long metric histories
                        self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the browser went away
            finally:
                conn.close()
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _forward

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    return Server((host, port), Handler)


def _experiment_urls(base: str) -> list[tuple[str, str]]:
    """(name, URL of its runs table) of each study's experiment the server lists (all of them if none is a
    study's), read through the UI's own address with MLflow's REST API."""
    import urllib.request

    req = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search", method="POST",
                                 data=json.dumps({"max_results": 1000, "view_type": "ACTIVE_ONLY"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        exps = json.load(r).get("experiments", [])
    studies = [e for e in exps if any(t.get("key") == "study" for t in e.get("tags", []))] or exps
    return [(e["name"], f"{base}/#/experiments/{e['experiment_id']}/runs?workflowType=machine_learning")
            for e in sorted(studies, key=lambda e: e["name"])]


def cmd_ui(args) -> int:
    """The MLflow UI (and optuna-dashboard) as child process groups behind a small proxy on --port (see
    WORKFLOW_DEFAULT); SIGINT and SIGTERM stop every process."""
    import shutil
    import signal
    import subprocess
    import tempfile
    import threading

    from .stores import check_mlflow_file, sqlite_path

    home = home_dir(args)
    tracking = tracking_uri(args, home)
    db = sqlite_path(tracking)
    source = "--tracking-uri" if args.tracking_uri else home_source(args)
    if db is not None and db.exists() and not db.is_file():
        raise SpecError(f"invalid {source}: no MLflow store in {tracking} ({why_no_file(db)})")
    if db is not None and not (db.is_file() and check_mlflow_file(db)):
        raise SpecError(f"invalid {source}: no studies are recorded in {tracking} yet; start one with `study run`")
    # what --study and --storage ask for, checked before anything is bound, read or written
    dash = None
    if args.storage and not args.study:
        raise SpecError(f"invalid --storage: it is the Optuna storage of --study, and no --study was given; add "
                        f"--study NAME, but got storage={masked(args.storage)!r}")
    if args.study:  # installed beside this Python (a venv not on PATH), or on PATH
        beside = Path(sys.executable).with_name("optuna-dashboard")
        dash = str(beside) if beside.is_file() else shutil.which("optuna-dashboard")
    storage = args.storage or (default_storage(home, check_name(args.study)) if args.study else None)
    if storage is not None and sqlite_path(storage) is not None and not sqlite_path(storage).is_file():
        raise SpecError(f"invalid --study: no Optuna storage for study {args.study!r} at {sqlite_path(storage)} "
                        f"(`study list` names the studies; --storage gives another), but got study={args.study!r}")
    _check_port(args.host, args.port)
    if db is not None:  # a moved or copied home shows its own figures (MLflow records absolute locations)
        from .stores import StoreError
        from .tracking import adopt_home
        try:
            adopt_home(tracking)
        except StoreError as e:
            print(f"warning: {e}", file=sys.stderr)
    if args.study and not dash:
        print(f"warning: --study {args.study}: optuna-dashboard is not installed (pip install optuna-dashboard); "
              f"serving MLflow only", file=sys.stderr)
    if dash:
        _check_port(args.host, args.port + 1, "--port (+1, optuna-dashboard)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who reaches this address can read and change the "
              f"records; MLflow has no login here. Prefer 127.0.0.1 with an SSH tunnel.", file=sys.stderr)
    with socket.socket() as s:  # the MLflow server itself listens on loopback only, behind the proxy
        s.bind(("127.0.0.1", 0))
        inner = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking, "--host", "127.0.0.1",
           "--port", str(inner), "--workers", "1"]
    if db is not None:
        cmd += ["--default-artifact-root", (home / "artifacts").as_uri()]
    try:
        proxy = _ui_proxy(args.host, args.port, inner)
    except OSError as e:
        raise SpecError(f"invalid --port: {args.host}:{args.port} is not free ({e.strerror}); choose another port") \
            from None
    stopping: list[int] = []  # the signal handler only records the signal; the main loop stops the servers
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))
    # each server in its own process group, so stopping it stops its workers too (mlflow server forks ~9)
    log = tempfile.TemporaryFile()  # the server's own log: shown only if it fails to come up
    # MLflow's job runner (a queue of worker processes for GenAI evaluation jobs) serves nothing a study records:
    # off unless the user turned it on: 3 processes and 0.66 GB instead of 11 and 1.37 GB (bench/README.md)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    procs = [subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT, env=env)]
    if dash:
        procs.append(subprocess.Popen([dash, storage, "--host", args.host, "--port", str(args.port + 1)],
                                      start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    serving = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    serving.start()
    base = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{args.port}"
    print(f"starting the MLflow UI on {base} (store {tracking}) …", file=sys.stderr, flush=True)
    try:
        if not _wait_answering(f"{base}/health", procs[:1], stopping):
            if stopping:
                return 0
            log.seek(0)
            err = log.read().decode(errors="replace").strip().splitlines()
            print(f"study: error: the MLflow server did not come up ({(err or ['no answer in 180 s'])[-1][:200]})",
                  file=sys.stderr)
            return 1
        try:
            runs = _experiment_urls(base)
        except (OSError, ValueError, KeyError) as e:
            runs = []
            print(f"warning: could not list the experiments ({type(e).__name__}: {e})", file=sys.stderr)
        print(f"MLflow UI: {base}/  (store {tracking}); Ctrl-C stops it", flush=True)
        for name, url in runs:
            report = home / name / "export" / "report.html"   # what `study run` exported when it finished
            print(f"  {name}: {url}" + (f"\n  {'':{len(name)}}  report: {report.as_uri()}" if report.is_file() else ""),
                  flush=True)
        if dash:
            print(f"optuna-dashboard: http://{args.host}:{args.port + 1}  (storage {storage})", flush=True)
        while not stopping and procs[0].poll() is None:
            time.sleep(0.2)
        return 0
    finally:
        proxy.shutdown()
        proxy.server_close()
        _stop_tree(procs)


def _stop_tree(procs) -> None:
    """SIGTERM to each server's process group, SIGKILL to what is left after 20 s: nothing stays listening."""
    import signal
    import subprocess

    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # workers that outlived their parent, too
        except ProcessLookupError:
            pass
        p.wait()


# --------------------------------------------------------------------------- study export

def cmd_export(args) -> int:
    from .report import export, summary_lines

    home = home_dir(args)
    tracking = tracking_uri(args, home)
    check_name(args.name)
    check_output(args.out, "--out", folder=True)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    from .report import FORMATS
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise SpecError(f"invalid --format: a comma-separated list of {', '.join(FORMATS)}, but got {args.format!r}")
    try:
        lands, written = export(tracking, args.name, Path(args.out).resolve(), args.metric, formats, args.dashboard,
                                log_to_mlflow=not args.no_log)
    except LookupError as e:
        raise SpecError(str(e).strip("'\"")) from None
    logged = "not logged to MLflow (--no-log)" if args.no_log else "also logged to the study's parent run"
    print(f"study {args.name}: {len(lands)} arms, {len(written)} files in {Path(args.out).resolve()} ({logged})")
    print("\n".join(summary_lines(lands)))
    return 0


# --------------------------------------------------------------------------- study recommend

def cmd_recommend(args) -> int:
    """λ*(η) at one learning rate from each arm's fitted ridge, with its interval, η·λ and the decay timescale."""
    import math

    from .landscape import landscapes, measured_lr_range, recommend
    from .tracking import read_study

    try:
        lr = float(args.lr)
    except ValueError:
        raise SpecError(f"invalid --lr: expected a number, but got lr={args.lr!r}") from None
    if not (math.isfinite(lr) and lr > 0):
        raise SpecError(f"invalid --lr: a learning rate is a finite number > 0, but got lr={args.lr!r}")
    check_name(args.name)
    tracking = tracking_uri(args, home_dir(args))
    try:
        _, _, metric, members = read_study(tracking, args.name, args.metric)
    except LookupError as e:
        raise SpecError(str(e).strip("'\"")) from None
    if not members:
        raise SpecError(f"invalid name: study {args.name!r} has no finished member runs yet")
    lands = {L.arm: L for L in landscapes(members, metric=metric)}
    if args.arm is not None and args.arm not in lands:
        raise SpecError(f"invalid --arm: study {args.name!r} has arms {', '.join(lands)}, but got arm={args.arm!r}")
    chosen = [lands[args.arm]] if args.arm else list(lands.values())
    results, refused = [], []
    for L in chosen:
        try:
            results.append((L, recommend(L, lr)))
        except ValueError as e:
            refused.append(str(e))
    if not results:
        if len(refused) == 1 and (args.arm or not refused[0].startswith("invalid --arm: ")):
            raise SpecError(refused[0])
        no_ridge = [m.removeprefix("invalid --arm: ") for m in refused if m.startswith("invalid --arm: ")]
        if len(no_ridge) == len(refused):   # no --arm was given: blame the study, not a flag
            raise SpecError(f"invalid name: study {args.name!r} has no arm with a fitted ridge to recommend from: "
                            + "; ".join(no_ridge))
        ranges = "; ".join(f"{L.arm} [{r[0]:.3g}, {r[1]:.3g}]" if (r := measured_lr_range(L)) else f"{L.arm}: no ridge"
                           for L in chosen)
        raise SpecError(f"invalid --lr: {lr:g} is outside the learning rates where every arm's ridge was measured "
                        f"({ranges}); no extrapolation")
    steps = members[0].get("total_steps")  # the run's length, to say the timescale as a fraction of it
    print(f"study {args.name} (final {metric}): best weight decay at η={lr:g} from each arm's fitted ridge, "
          f"95 % interval")
    for L, r in results:
        lo, hi = r["weight_decay_ci"]
        ci = f"[{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) else "(no interval: the data do not bound the slope)"
        tau = r["timescale_steps"]
        run = f" = {tau / steps:.2g}× the run's {steps} steps" if steps else ""
        prod = "" if L.decay == "independent" else f"; η·λ* = {r['lr_x_weight_decay']:.3g}"
        print(f"  {L.arm:<20} λ* = {r['weight_decay']:.3g} {ci}{prod}; decay timescale τ = {r['timescale_rule']} "
              f"≈ {tau:.3g} steps{run} (ridge over {r['rows']} rows, η in [{r['lr_range'][0]:.3g}, "
              f"{r['lr_range'][1]:.3g}]; slope {L.slope:.2f})")
        print(f"  {'':<20} verdict: {r['verdict_text']}")
        for w in r["warnings"]:
            print(f"  {'':<20} warning: {w}")
    for msg in refused:
        print(f"  {msg.split(': ', 1)[1]}")
    return 0


# --------------------------------------------------------------------------- study bench

def cmd_bench(args) -> int:
    import torch

    from .bench import bench_data, format_table, run_bench, write_json
    from .engine import resolve_device

    if args.json:
        check_output(args.json, "--json")   # before the benchmark runs, not after
    if args.device == "cuda":
        _refuse_cuda_flag()
    device = resolve_device(args.device)
    try:
        members = tuple(int(k) for k in args.members.split(","))
        batches = tuple(int(b) for b in args.batch_size.split(","))
    except ValueError:
        raise SpecError(f"invalid --members/--batch-size: comma-separated integers, but got "
                        f"members={args.members!r}, batch_size={args.batch_size!r}") from None
    if min(members) < 1 or min(batches) < 1:
        raise SpecError(f"invalid --members/--batch-size: values must be >= 1, but got {members}, {batches}")
    if max(members) > HARD_LIMITS["execution.members_per_trial"] or max(batches) > HARD_LIMITS["train.batch_size"]:
        raise SpecError(f"invalid --members/--batch-size: at most {HARD_LIMITS['execution.members_per_trial']:,} members "
                        f"and {HARD_LIMITS['train.batch_size']:,} images per batch, but got {members}, {batches}")
    for flag, v, lo in (("--warmup", args.warmup, 0), ("--steps", args.steps, 1), ("--windows", args.windows, 1),
                        ("--workers", args.workers, 0), ("--threads", args.threads, 1)):
        if v is not None and not lo <= v <= 100_000:
            raise SpecError(f"invalid {flag}: must lie in [{lo}, 100,000], but got {flag[2:]}={v}")
    if not known_model(args.model):
        raise SpecError(f"invalid --model: must be one of {', '.join(MODEL_NAMES)} (any resnet of depth 6n+2 up to "
                        f"{MAX_DEPTH}), but got model={args.model[:60]!r}")
    check_data_path_flag(args.dataset, args.data_path)
    if args.data_path is None and DATASETS[args.dataset].needs_path:
        raise SpecError(f"invalid --data-path: dataset {args.dataset} needs a folder, but got none")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # a data error is the only line, before the banner, and names the flag that was typed
        data = bench_data(args.dataset, args.data_path)
    except (SpecError, DataError) as e:
        raise SpecError(str(e).replace("invalid data.path:", "invalid --data-path:", 1)) from None
    print(f"study bench: {args.model} on {device} ({args.dataset}), K={members}, batch={batches}, "
          f"precision={args.precision}, channels_last={args.channels_last}, cudnn_benchmark={args.cudnn_benchmark}, "
          f"compile={args.compile}", flush=True)
    on_row = (lambda partial: write_json(partial, args.json)) if args.json else None  # a killed run keeps its rows
    result = run_bench(args.model, members, batches, str(device), args.dataset, args.data_path, args.warmup,
                       args.steps, args.windows, args.compile, not args.no_baseline, args.workers,
                       precision=args.precision, channels_last=AUTO_BOOL[args.channels_last],
                       cudnn_benchmark=AUTO_BOOL[args.cudnn_benchmark], on_row=on_row, data=data)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    failed = sum(bool(r.get("error")) for r in result["rows"])
    if failed:
        print(f"{failed} of {len(result['rows'])} rows failed (see FAILED above)", file=sys.stderr)
    return 1 if failed == len(result["rows"]) else 0


# --------------------------------------------------------------------------- entry point

SET_HELP = ("override a spec field before it is checked: dotted KEY (train.epochs, search.seeds, "
            "arms[0].lr.high), VALUE in YAML (3, 1e-3, [0,1], null); repeatable; recorded with the study")

EPILOGS = {
    "main": """examples:
  study validate search_spaces/quickstart.yaml
  study run search_spaces/quickstart.yaml --smoke
  study list
  study export quickstart --out ~/studies/quickstart/export
  study SUBCOMMAND --help            # each subcommand's flags and examples""",
    "train": """examples:
  study train search_spaces/quickstart.yaml --out result.json --device cpu
  study train SPEC --out result.json --set train.epochs=2 --set search.seeds=[0]
  study train SPEC --out result.json --device cuda --precision bf16 --channels-last true --compile
  study train SPEC --out result.json --data-path /data/cifar10""",
    "validate": """examples:
  study validate search_spaces/quickstart.yaml
  study validate search_spaces/quickstart.yaml --smoke          # what `study run --smoke` would run
  study validate SPEC --set train.epochs=3 --set search.seeds=[0,1,2]
  study validate SPEC --data-path /data/cifar10""",
    "run": """examples:
  study run search_spaces/quickstart.yaml                       # local Ray, SQLite stores under ~/studies
  study run search_spaces/quickstart.yaml --smoke               # a few members, one epoch: an end-to-end check
  study --home /tmp/studies run SPEC                            # another home (or STUDY_HOME)
  study run SPEC --set train.epochs=3 --set search.seeds=[0,1]  # override spec fields (recorded with the study)
  study run SPEC --address HOST:6379                            # an existing Ray cluster (RAY_ADDRESS is honoured)
  study run SPEC --tracking-uri http://127.0.0.1:5000 --storage postgresql://user@db/optuna
  study run SPEC --data-path /data/cifar10                      # replaces data.path

--smoke shrinks the spec after --set (one epoch, at most 2 x 2 grid points and one seed per arm).
Progress goes to stderr: one updating bar on a terminal, a plain line every 10 s otherwise.""",
    "resume": """examples:
  study resume quickstart                                       # finish a study whose driver died
  study --home /tmp/studies resume quickstart
  study resume quickstart --tracking-uri http://127.0.0.1:5000 --storage postgresql://user@db/optuna

resume runs the spec recorded when the study started (with its --set, --data-path and --smoke);
give the same --tracking-uri and --storage the study was started with.""",
    "list": """examples:
  study list                                                    # the studies in ~/studies (or STUDY_HOME)
  study --home /tmp/studies list
  study list --tracking-uri http://127.0.0.1:5000 --storage postgresql://user@db/optuna

MEMBERS is finished of planned; STATE is the parent run's status and, while it says RUNNING,
whether a driver holds the study's lease (a driver that died leaves RUNNING without a lease).""",
    "export": """examples:
  study export quickstart --out ~/studies/quickstart/export
  study export quickstart --out /tmp/qs --metric test_error --format png,html --no-log
  study export quickstart --out /tmp/qs --dashboard sgd_vs_adam""",
    "recommend": """examples:
  study recommend quickstart --lr 0.05
  study recommend quickstart --lr 0.05 --arm sgd-coupled --metric test_error""",
    "bench": """examples:
  study bench                                                   # resnet20, K=1,8,32 on synthetic data
  study bench --model resnet8 --members 1,8 --steps 3 --device cpu --threads 2
  study bench --device cuda --members 1,32,128 --compile both --json bench.json""",
    "ui": """examples:
  study ui                                                      # MLflow UI on 127.0.0.1:5000
  study ui --port 5050 --study quickstart                       # and optuna-dashboard on port 5051
  study --home /tmp/studies ui""",
}


TRACKING_HELP = "MLflow tracking URI: a server http://HOST:PORT or sqlite:////ABSOLUTE/PATH (default sqlite:///HOME/mlflow.db)"
STORAGE_HELP = "Optuna storage: SQLAlchemy URL or journal file (default sqlite:///HOME/NAME/optuna.db)"
LARGE_HELP = (f"run a study past {LARGE_MEMBERS:,} members or {LARGE_MEMBER_EPOCHS:,} member-epochs "
              "(refused otherwise, as a likely typo)")


def _sub(sub, name: str, helptext: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=helptext, description=helptext[:1].upper() + helptext[1:] + ".",
                          epilog=EPILOGS[name], formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="study", description="Weight decay vs learning rate studies on member arrays.",
                                epilog=EPILOGS["main"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", help="studies' home directory (default $STUDY_HOME or ~/studies)")
    sub = p.add_subparsers(dest="command", required=True)

    t = _sub(sub, "train", "train a spec's members in this process: no Ray, Optuna or MLflow")
    t.add_argument("spec", help="a spec file (YAML), e.g. search_spaces/quickstart.yaml")
    t.add_argument("--out", required=True, help="result JSON")
    t.add_argument("--device", choices=["cpu", "cuda"], help="replaces train.device")
    t.add_argument("--data-path", help="replaces the spec's data.path")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP.replace("; recorded with the study", ""))
    t.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="replaces train.precision (auto: bf16 autocast on CUDA, fp32 on a CPU)")
    t.add_argument("--channels-last", choices=["auto", "true", "false"],
                   help="replaces train.channels_last (auto: on for CUDA): channels-last activations and conv weights")
    t.add_argument("--cudnn-benchmark", choices=["auto", "true", "false"],
                   help="replaces train.cudnn_benchmark (auto: on for CUDA): cuDNN autotunes each convolution shape")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="replaces train.compile: torch.compile the forward and loss (compile time is reported)")
    t.add_argument("--allow-large", action="store_true", help=LARGE_HELP)

    v = _sub(sub, "validate", "check a spec without running anything")
    v.add_argument("spec", help="a spec file (YAML)")
    v.add_argument("--smoke", action="store_true", help="check what `study run --smoke` would run")
    v.add_argument("--data-path", help="replaces the spec's data.path")
    v.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP.replace("; recorded with the study", ""))
    v.add_argument("--allow-large", action="store_true", help=LARGE_HELP)

    for name, helptext in (("run", "run a study on Ray Tune with Optuna and MLflow"),
                           ("resume", "finish a study whose driver died")):
        r = _sub(sub, name, helptext)
        if name == "resume":
            r.add_argument("name", help="the study's name (`study list` shows them)")
        else:
            r.add_argument("spec", help="a spec file (YAML), e.g. search_spaces/quickstart.yaml")
        r.add_argument("--address", help="Ray cluster address (default: start a local Ray; RAY_ADDRESS is honoured)")
        r.add_argument("--tracking-uri", help=TRACKING_HELP)
        r.add_argument("--storage", help=STORAGE_HELP)
        r.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name == "run":
            r.add_argument("--smoke", action="store_true", help="a few members and one epoch")
            r.add_argument("--data-path", help="replaces the spec's data.path (e.g. a folder with CIFAR-10 Parquet files)")
            r.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP)
            r.add_argument("--allow-large", action="store_true", help=LARGE_HELP)

    ls = _sub(sub, "list", "the studies in a home: members done, failed, running or not, last update")
    ls.add_argument("--tracking-uri", help=TRACKING_HELP)
    ls.add_argument("--storage", help="Optuna storage holding the studies' driver leases "
                                      "(default sqlite:///HOME/NAME/optuna.db per study)")
    ls.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    e = _sub(sub, "export", "heatmaps, λ*(η) slopes, landscape.json and an HTML report from MLflow")
    e.add_argument("name", help="the study's name (`study list` shows them)")
    e.add_argument("--out", required=True, help="folder for the figures, landscape.json and report.html")
    e.add_argument("--tracking-uri", help=TRACKING_HELP)
    e.add_argument("--metric", help="final metric to map (default: the study's search.metric)")
    e.add_argument("--format", default="png,svg,html", help="comma-separated: png, svg, html")
    e.add_argument("--dashboard", default="default", help="a dashboards/NAME.yaml or a path to one")
    e.add_argument("--no-log", action="store_true", help="write the files only; log nothing to the parent run")
    e.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    c = _sub(sub, "recommend", "the best weight decay at a learning rate, from a study's fitted ridge")
    c.add_argument("name", help="the study's name (`study list` shows them)")
    c.add_argument("--lr", required=True, help="learning rate η, within the study's measured range")
    c.add_argument("--arm", help="optimizer-decay, e.g. sgd-coupled (default: every arm)")
    c.add_argument("--metric", help="final metric whose landscape to use (default: the study's search.metric)")
    c.add_argument("--tracking-uri", help=TRACKING_HELP)
    c.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    b = _sub(sub, "bench", "member-images/s of arrays vs a plain single-model loop, same run")
    b.add_argument("--model", default="resnet20", help="the model (default resnet20)")
    b.add_argument("--members", default="1,8,32", help="array sizes K, comma-separated")
    b.add_argument("--batch-size", default="128", help="comma-separated")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    b.add_argument("--dataset", default="synthetic", choices=["synthetic", "parquet", "digits", "cifar10"],
                   help="images to step on (default synthetic, CIFAR-10's shape)")
    b.add_argument("--data-path", help="folder with train/test.parquet (dataset parquet)")
    b.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    b.add_argument("--steps", type=int, default=5, help="steps per timed window")
    b.add_argument("--windows", type=int, default=3, help="timed windows; the median is reported")
    b.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    b.add_argument("--threads", type=int, help="torch CPU threads")
    b.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA, fp32 on a CPU (the plain loop uses the same)")
    b.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"],
                   help="channels-last activations and conv weights (auto: on for CUDA; the plain loop follows)")
    b.add_argument("--cudnn-benchmark", default="auto", choices=["auto", "true", "false"],
                   help="cuDNN autotunes each convolution shape (auto: on for CUDA; the plain loop follows)")
    b.add_argument("--compile", nargs="?", const="on", default="off", choices=["off", "on", "both"],
                   help="torch.compile the array step: compiled rows only (--compile), or eager and compiled "
                        "rows in the same run (--compile both); compile time is reported, not timed")
    b.add_argument("--no-baseline", action="store_true", help="skip the plain single-model loop")
    b.add_argument("--json", help="write the results here")

    u = _sub(sub, "ui", "MLflow UI (and optuna-dashboard when installed) on 127.0.0.1")
    u.add_argument("--tracking-uri", help=TRACKING_HELP)
    u.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    u.add_argument("--port", type=int, default=5000, help="MLflow's port (default 5000); optuna-dashboard takes the next")
    u.add_argument("--study", help="also serve this study's Optuna storage with optuna-dashboard")
    u.add_argument("--storage", help="the --study's Optuna storage, if not its default (sqlite:///HOME/NAME/optuna.db)")
    u.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


POSITIONALS = {"spec": "SPEC", "name": "NAME"}


HOMELESS = {"train": "--out", "validate": "the terminal", "bench": "the terminal and --json"}


def _refuse_empty_values(args) -> None:
    """An empty path, URL or name is a mistake, never "not given" (an empty --home would mean ~/studies)."""
    for dest, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, str) and dest != "command" and not v.strip():
                flag = POSITIONALS.get(dest, "--" + dest.replace("_", "-"))
                raise SpecError(f"invalid {flag}: an empty value ({v!r}); give a value or leave the "
                                f"{'argument' if dest in POSITIONALS else 'flag'} out")
    if args.command in HOMELESS and args.home:  # nothing of these reads or writes a home: --home would be ignored
        raise SpecError(f"invalid --home: study {args.command} reads and writes no studies' home (its output goes to "
                        f"{HOMELESS[args.command]}); leave --home out, but got home={args.home!r}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # one retry loop that tells the user (tracking._retry), instead of MLflow's silent HTTP retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    if getattr(args, "address", None) is None and os.environ.get("RAY_ADDRESS") and args.command in ("run", "resume"):
        args.address = os.environ["RAY_ADDRESS"]  # launched by `ray job submit`
    handlers = {"train": cmd_train, "validate": cmd_validate, "run": cmd_run, "resume": cmd_resume, "ui": cmd_ui,
                "export": cmd_export, "bench": cmd_bench, "recommend": cmd_recommend, "list": cmd_list}
    try:
        _refuse_empty_values(args)
        check_settings()
        if args.command in ("train", "run", "resume", "bench") and os.environ.get("STUDY_CACHE") is not None:
            check_output(os.environ["STUDY_CACHE"], "STUDY_CACHE", folder=True)  # decoded datasets go there
        return handlers[args.command](args)
    except (SpecError, DataError, StoreError, SettingError, FileExistsError) as e:
        return _fail(str(e))
    except Exception as e:
        damage = _database_damage(e)
        if damage is None:
            raise
        return _fail(f"invalid --tracking-uri: a store cannot be read ({damage}); restore it from a copy or move it away")


def _database_damage(e: BaseException) -> str | None:
    """SQLite's own complaint when `e` (or what it wraps) says a store file is damaged ("file is not a
    database", "database disk image is malformed"): damage in pages the up-front check
    (stores.check_mlflow_file) does not read. Operational errors (locks, races, a full disk) are not damage
    and stay as they are."""
    import sqlite3

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        orig = getattr(e, "orig", None)   # SQLAlchemy wraps the driver's exception
        for x in (e, orig):
            if isinstance(x, sqlite3.DatabaseError) and not isinstance(x, sqlite3.OperationalError):
                return str(x).splitlines()[0][:200]
        e = e.__cause__ or e.__context__
    return None


def _stdout_gone() -> bool:
    """Whether the reader of stdout has gone away (a pipe whose read end is closed reports POLLERR)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLERR)
        return bool(poll.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def entry() -> None:
    """The `study` command. A process that loaded Ray ends with os._exit once main() has returned: by then the
    study's records are closed, Ray is shut down and the output is flushed, and what is skipped is the
    interpreter's teardown, in which an interrupted driver was seen to die of SIGSEGV (about one SIGTERM in five,
    idle or loaded, after its last line and past faulthandler), turning exit 130 into -11."""
    try:
        code = main()
        sys.stdout.flush()  # here, not at the interpreter's exit, so that a reader gone away is met below
    except KeyboardInterrupt:  # Ctrl-C where no command stops cleanly by itself (the drivers do: exit 130 too)
        print("study: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # another pipe (a subprocess, a socket): a real error
        # `study list | head`: the reader of the output has gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as stdout is flushed
        code = 1
    if "ray" in sys.modules:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
