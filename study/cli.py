"""The `study` command: train | validate | run | resume | list | ui | export | recommend | bench.

Runs each command and prints the messages users read; the flags are study/parser.py's, the checks made
before any work study/checks.py's, `study ui` study/ui.py's, and the work the driver's (run, resume), the
report's (export) and the engine's (train, bench). Bad specs and flags stop before anything starts,
with one line naming the field and the value and exit code 2. Importing this module loads no torch,
Ray, Optuna or MLflow: each command imports what it uses.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

from .checks import (check_address, check_bench_args, check_local_device, check_lr, check_name, check_output,
                     check_size, fields_for_run_only, home_dir, home_source, refuse_cuda_flag, tracking_uri,
                     env_address, smoke_notes, with_train_flags)
from .datasets import DataError, split_sizes
from .environment import SettingError, check_settings
from .parser import AUTO_BOOL, build_parser, refuse_empty_values
from .spec import (SpecError, check_cost, data_warnings, grid_members, load_spec, shrink_for_smoke,
                   timescale_warnings, total_steps)
from .stores import StoreError, database_damage, default_storage, masked, why_no_file
from .ui import cmd_ui

EXIT_USAGE = 2


def _fail(msg: str) -> int:
    print(f"study: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


# --------------------------------------------------------------------------- study train


def cmd_train(args) -> int:
    import torch

    from .data import load_spec_data
    from .engine import pack_arrays, resolve_device, train_arrays

    spec = with_train_flags(load_spec(args.spec, args.data_path, args.set), args)
    check_output(args.out, "--out")          # before training: results are never lost to a bad path
    check_size(spec, args.allow_large)
    members = grid_members(spec)
    if args.device == "cuda":
        refuse_cuda_flag()
    if not args.device:
        check_local_device(spec, "study train trains here")
    device = resolve_device(args.device or spec.train.device)
    if device.type == "cpu" and spec.train.cudnn_benchmark is True:  # kept (a CPU rehearsal forces it), but said
        print("warning: cudnn_benchmark true changes nothing on a CPU (cuDNN autotunes CUDA convolutions only)",
              file=sys.stderr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    d = spec.data
    data = load_spec_data(d)
    arrays = pack_arrays(members, spec.execution.members_per_trial)
    for_run = fields_for_run_only(spec)
    if for_run:  # the spec serves both commands: say what this one leaves to `study run`
        print(f"note: study train trains here, one array after another, and records nothing in MLflow or Optuna; "
              f"left to `study run`: {', '.join(for_run)}", file=sys.stderr)
    print(f"study train: {len(members)} members in {len(arrays)} arrays on {device} "
          f"({spec.model.name}, {d.dataset}: {len(data.train_y)} train / {len(data.test_y)} test images, "
          f"{spec.train.epochs} epochs)")
    t0 = time.time()
    results = train_arrays(spec, arrays, data, device)
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
        spec, full = shrink_for_smoke(spec), spec
        for note in smoke_notes(full, spec, args.set):
            print(note, file=sys.stderr)
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


# --------------------------------------------------------------------------- study run / resume

def cmd_run(args) -> int:
    spec = load_spec(args.spec, args.data_path, args.set)
    if args.smoke:
        spec, full = shrink_for_smoke(spec), spec
        for note in smoke_notes(full, spec, args.set):
            print(note, file=sys.stderr)
    check_size(spec, args.allow_large)
    return _drive(args, spec, resume=False)


def cmd_resume(args) -> int:
    from .search import holds_study
    from .tracking import recorded_spec, recorded_storage

    home = home_dir(args)
    try:  # the resolved spec the study started with: same data, same --smoke shrinking, same everything
        spec = recorded_spec(tracking_uri(args, home), check_name(args.name))
        started = recorded_storage(tracking_uri(args, home), spec.name, given=args.storage)
        if args.storage is None:  # the Optuna storage it was started with, when that was not the home's default
            args.storage = started
        elif (masked(args.storage) != masked(started or default_storage(home, spec.name))
              and not holds_study(args.storage, spec)):
            raise SpecError(f"invalid --storage: it holds no Optuna study of {spec.name!r}, which was started with "
                            f"the Optuna storage {masked(started or default_storage(home, spec.name))}; resume it "
                            f"there, or with a copy of it (leave --storage "
                            f"out{', or give that URL with its password' if started and '***@' in started else ''}), "
                            f"but got storage={masked(args.storage)!r}")
    except LookupError as e:
        raise SpecError(str(e).strip("'\"")) from None
    return _drive(args, spec, resume=True)


def _drive(args, spec, resume: bool) -> int:
    from .driver import STOP, Driver, Stores

    check_address(args.address)
    home = home_dir(args)
    if args.address is None:
        check_local_device(spec, "a local Ray, no --address")
    x, device = spec.execution, spec.train.device
    if device == "cpu" and x.gpus_per_trial > 0:  # said, not refused: a cluster may declare GPUs it schedules by
        print(f"warning: train.device is cpu and execution.gpus_per_trial is {x.gpus_per_trial:g}: each trial holds a "
              f"GPU share it does not train on", file=sys.stderr)
    if device == "cuda" and x.gpus_per_trial == 0:
        raise SpecError("invalid execution.gpus_per_trial: train.device is cuda, and Ray gives a trial without a GPU "
                        "share no CUDA device; use a share in (0, 1], but got gpus_per_trial=0")
    if args.address is None and spec.execution.gpus_per_trial > 0:
        import torch

        if not torch.cuda.is_available():  # a local Ray has no GPU to give: its trials would wait for ever
            raise SpecError(f"invalid execution.gpus_per_trial: a local Ray on this machine has no GPU (torch sees "
                            f"none); use 0, or run on a cluster with GPU workers (--address), but got "
                            f"gpus_per_trial={spec.execution.gpus_per_trial}")
    if args.address is None and spec.execution.cpus_per_trial > (os.cpu_count() or 1):
        raise SpecError(f"invalid execution.cpus_per_trial: a local Ray on this machine has {os.cpu_count()} CPUs, "
                        f"but got cpus_per_trial={spec.execution.cpus_per_trial}")
    check_output(str(home / spec.name / "export"), "--home", folder=True)  # where the landscape goes, at the end
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

    STOP.install()  # SIGTERM as Ctrl-C: a KeyboardInterrupt, which the driver turns into its clean stop
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
    for reason, n in Counter(outcome.failed.values()).most_common(5):
        print(f"  {n} failed: {reason}")
    from .report import best_lines, export, summary_lines

    for line in best_lines(spec.search.metric, outcome.best, outcome.best_setting):
        print(line)
    study_dir = home / spec.name
    if outcome.complete and not outcome.interrupted and spec.arms:  # Ctrl-C meant stop: resume exports
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


# --------------------------------------------------------------------------- study list

def cmd_list(args) -> int:
    """The studies of a home (or of --tracking-uri): members done of planned, failed, running or not, last update."""
    from .stores import check_mlflow_file, check_optuna_url, check_tracking_uri, sqlite_path
    from .search import study_state
    from .tracking import environment_line, list_studies

    home = home_dir(args)
    tracking = tracking_uri(args, home)
    db = sqlite_path(tracking)
    if args.storage:  # the leases' storage, checked as run checks it (a wrong one would misreport every study)
        check_optuna_url(args.storage, writing=False)
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
        row["state"] = study_state(row, args.storage or default_storage(home, row["name"]))
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


def cmd_export(args) -> int:
    from .report import export, summary_lines

    home = home_dir(args)
    tracking = tracking_uri(args, home)
    check_name(args.name)
    check_output(args.out, "--out", folder=True)
    out = Path(args.out).expanduser().resolve()
    if out == home or home.is_relative_to(out) or out.is_relative_to(home / "artifacts"):
        raise SpecError(f"invalid --out: {out} holds the studies' home or its MLflow artifacts; export into a folder "
                        f"of its own (e.g. {home / check_name(args.name) / 'export'}), but got out={args.out!r}")
    try:
        lands, written = export(tracking, args.name, Path(args.out).resolve(), args.metric, args.format, args.dashboard,
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
    from .report import recommend_lines
    from .tracking import read_study

    lr = check_lr(args.lr)
    check_name(args.name)
    tracking = tracking_uri(args, home_dir(args))
    try:
        _, _, metric, members = read_study(tracking, args.name, args.metric)
    except LookupError as e:
        raise SpecError(str(e).strip("'\"")) from None
    if not members:
        raise SpecError(f"invalid name: study {args.name!r} has no finished member runs yet")
    print("\n".join(recommend_lines(args.name, metric, members, lr, args.arm)))
    return 0


# --------------------------------------------------------------------------- study bench

def cmd_bench(args) -> int:
    import torch

    from .bench import bench_data, format_table, run_bench, write_json
    from .engine import resolve_device

    if args.json:
        check_output(args.json, "--json")   # before the benchmark runs, not after
    if args.device == "cuda":
        refuse_cuda_flag()
    device = resolve_device(args.device)
    members, batches = check_bench_args(args)
    if device.type == "cpu" and args.cudnn_benchmark == "true":
        print("warning: --cudnn-benchmark true changes nothing on a CPU (cuDNN autotunes CUDA convolutions only)",
              file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # a data error is the only line, before the banner, and names the flag that was typed
        data = bench_data(args.dataset, args.data_path)
    except (SpecError, DataError) as e:
        raise SpecError(str(e).replace("invalid data.path:", "invalid --data-path:", 1)) from None
    n_train = len(data.train_y)
    for b in batches:
        if b > n_train:
            print(f"warning: --batch-size {b} is larger than {args.dataset}'s {n_train:,} training images: each "
                  f"step takes them all", file=sys.stderr)
    print(f"study bench: {args.model} on {device} ({args.dataset}), K={members}, batch={batches}, "
          f"precision={args.precision}, channels_last={args.channels_last}, cudnn_benchmark={args.cudnn_benchmark}, "
          f"conv={args.conv}, "
          f"compile={args.compile}, cuda_graph={args.cuda_graph}", flush=True)
    on_row = (lambda partial: write_json(partial, args.json)) if args.json else None  # a killed run keeps its rows
    result = run_bench(args.model, members, batches, str(device), args.dataset, args.data_path, args.warmup,
                       args.steps, args.windows, args.compile, not args.no_baseline,
                       2 if args.workers is None else args.workers,
                       precision=args.precision, channels_last=AUTO_BOOL[args.channels_last],
                       cudnn_benchmark=AUTO_BOOL[args.cudnn_benchmark], on_row=on_row, data=data, conv=args.conv,
                       cuda_graph=args.cuda_graph)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    failed = sum(bool(r.get("error")) for r in result["rows"])
    if failed:
        print(f"{failed} of {len(result['rows'])} rows failed (see FAILED above)", file=sys.stderr)
    return 1 if failed == len(result["rows"]) else 0


# --------------------------------------------------------------------------- entry point

def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # one retry loop that tells the user (tracking._retry), instead of MLflow's silent HTTP retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

    handlers = {"train": cmd_train, "validate": cmd_validate, "run": cmd_run, "resume": cmd_resume, "ui": cmd_ui,
                "export": cmd_export, "bench": cmd_bench, "recommend": cmd_recommend, "list": cmd_list}
    try:
        refuse_empty_values(args)
        if getattr(args, "address", None) is None and "RAY_ADDRESS" in os.environ and args.command in ("run", "resume"):
            args.address = env_address()  # launched by `ray job submit`
        check_settings()
        if args.command in ("train", "run", "resume", "bench") and os.environ.get("STUDY_CACHE") is not None:
            check_output(os.environ["STUDY_CACHE"], "STUDY_CACHE", folder=True)  # decoded datasets go there
            # absolute: trials run in folders of their own, where a relative one would name another place
            os.environ["STUDY_CACHE"] = str(Path(os.environ["STUDY_CACHE"]).expanduser().resolve())
        if args.command in ("run", "resume") and os.environ.get("RAY_TMPDIR") is not None:
            check_output(os.environ["RAY_TMPDIR"], "RAY_TMPDIR", folder=True)  # a local Ray's sessions go there
        return handlers[args.command](args)
    except (SpecError, DataError, StoreError, SettingError, FileExistsError) as e:
        return _fail(str(e))
    except Exception as e:
        damage = database_damage(e)
        if damage is None:
            raise
        return _fail(f"invalid --tracking-uri: a store cannot be read ({damage}); restore it from a copy or move it away")


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
