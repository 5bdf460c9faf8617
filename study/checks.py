"""Checks of a command line made before any work starts: the studies' home, names, outputs, the device, a Ray
address, the tracking URI and a study's size. Each raises SpecError with one line naming the flag and the
value (the CLI prints it and exits 2). Loads no torch, Ray, Optuna or MLflow unless a check needs torch.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from .datasets import DATASETS, split_sizes
from .registry import MAX_DEPTH, MODEL_NAMES, known_model
from .spec import HARD_LIMITS, NAME_RE, SpecError, check_cost, check_data_path_flag, data_warnings
from .stores import default_tracking_uri, masked


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


def check_size(spec, allow_large: bool) -> None:
    """Before training (train, run): the study's cost refused past the stated size, and what the data makes of
    the spec's steps said on stderr."""
    n = split_sizes(spec.data)[0]
    check_cost(spec, n, allow_large)
    for w in data_warnings(spec, n):
        print(f"warning: {w}", file=sys.stderr)


def fields_for_run_only(spec) -> list[str]:
    """The spec's settings, other than their defaults, that only `study run` acts on."""
    from .spec import ExecutionSpec, SearchSpec, TrackingSpec

    out = [f"execution.{k}" for k in ("cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures")
           if getattr(spec.execution, k) != getattr(ExecutionSpec(), k)]
    out += ["search.refine"] if spec.search.refine != SearchSpec().refine else []
    out += ["tracking.experiment"] if spec.tracking.experiment != TrackingSpec().experiment else []
    return out


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


def refuse_cuda_flag() -> None:
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


_NOTED: set[str] = set()  # MLFLOW_TRACKING_URI values already pointed out in this process


def env_address() -> str:
    """RAY_ADDRESS (set by `ray job submit`) as --address, checked as such and named as itself when refused."""
    value = os.environ["RAY_ADDRESS"]
    try:
        if not value.strip():
            raise SpecError("invalid --address: an empty value")
        check_address(value)
    except SpecError as e:
        raise SpecError(str(e).replace("invalid --address", "invalid RAY_ADDRESS", 1)
                        + ("; unset it or give HOST:PORT" if not value.strip() else "")) from None
    return value


def tracking_uri(args, home: Path) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the SQLite file under the studies' home. Where a --home
    was given but MLFLOW_TRACKING_URI decides, one line says so: the home's own store is not the one read."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if not args.tracking_uri and env is not None and not env.strip():  # not "unset": a mistake, said as one
        raise SpecError(f"invalid MLFLOW_TRACKING_URI: an empty value ({env!r}); unset it, or give a URI")
    if (not args.tracking_uri and env and getattr(args, "home", None) and env not in _NOTED
            and env != default_tracking_uri(home)):
        _NOTED.add(env)
        print(f"note: the records are in MLFLOW_TRACKING_URI={masked(env)}, not {default_tracking_uri(home)} "
              f"(--tracking-uri or unsetting MLFLOW_TRACKING_URI chooses otherwise)", file=sys.stderr)
    return args.tracking_uri or env or default_tracking_uri(home)

def check_bench_args(args) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`study bench`'s flags: (array sizes, batch sizes), each flag within what can run."""
    try:
        members = tuple(int(k) for k in args.members.split(","))
        batches = tuple(int(b) for b in args.batch_size.split(","))
    except ValueError:
        raise SpecError(f"invalid --members/--batch-size: comma-separated integers, but got "
                        f"members={args.members!r}, batch_size={args.batch_size!r}") from None
    for flag, vals in (("--members", members), ("--batch-size", batches)):
        if len(set(vals)) < len(vals):  # the same row twice: twice the time, nothing learned
            raise SpecError(f"invalid {flag}: each value once, but got {flag[2:]}={','.join(map(str, vals))}")
    if args.no_baseline and args.workers is not None:
        raise SpecError(f"invalid --workers: the DataLoader workers of the plain loop, which --no-baseline skips; "
                        f"leave one of them out, but got workers={args.workers}")
    if min(members) < 1 or min(batches) < 1:
        raise SpecError(f"invalid --members/--batch-size: values must be >= 1, but got {members}, {batches}")
    if max(members) > HARD_LIMITS["execution.members_per_trial"] or max(batches) > HARD_LIMITS["train.batch_size"]:
        raise SpecError(f"invalid --members/--batch-size: at most {HARD_LIMITS['execution.members_per_trial']:,} members "
                        f"and {HARD_LIMITS['train.batch_size']:,} images per batch, but got {members}, {batches}")
    for flag, v, lo, hi in (("--warmup", args.warmup, 0, 100_000), ("--steps", args.steps, 1, 100_000),
                            ("--windows", args.windows, 1, 100_000),
                            ("--workers", args.workers, 0, 256),     # DataLoader processes
                            ("--threads", args.threads, 1, 1024)):   # torch's pool (100,000 crashed it)
        if v is not None and not lo <= v <= hi:
            raise SpecError(f"invalid {flag}: must lie in [{lo}, {hi:,}], but got {flag[2:]}={v}")
    if not known_model(args.model):
        raise SpecError(f"invalid --model: must be one of {', '.join(MODEL_NAMES)} (any resnet of depth 6n+2 up to "
                        f"{MAX_DEPTH}), but got model={args.model[:60]!r}")
    check_data_path_flag(args.dataset, args.data_path)
    if args.data_path is None and DATASETS[args.dataset].needs_path:
        raise SpecError(f"invalid --data-path: dataset {args.dataset} needs a folder, but got none")
    return members, batches


def check_lr(text: str) -> float:
    """`study recommend --lr`: a finite number > 0."""
    import math

    try:
        lr = float(text)
    except ValueError:
        raise SpecError(f"invalid --lr: expected a number, but got lr={text!r}") from None
    if not (math.isfinite(lr) and lr > 0):
        raise SpecError(f"invalid --lr: a learning rate is a finite number > 0, but got lr={text!r}")
    return lr


def with_train_flags(spec, args):
    """The spec with `study train`'s --precision, --channels-last, --cudnn-benchmark, --conv, --compile and
    --cuda-graph applied."""
    import dataclasses

    from .parser import AUTO_BOOL

    overrides = {}
    if getattr(args, "precision", None):
        overrides["precision"] = args.precision
    if getattr(args, "channels_last", None):
        overrides["channels_last"] = AUTO_BOOL[args.channels_last]
    if getattr(args, "cudnn_benchmark", None):
        overrides["cudnn_benchmark"] = AUTO_BOOL[args.cudnn_benchmark]
    if getattr(args, "conv", None):
        overrides["conv"] = args.conv
    for name in ("compile", "cuda_graph"):  # --compile / --no-compile, --cuda-graph / --no-cuda-graph
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, **overrides)) if overrides else spec


def smoke_notes(full, smoke, sets) -> list[str]:
    """The --set values `--smoke` replaces (it shrinks epochs, grids, seeds, refine, arrays): said, not silent."""
    import re

    def at(d, key: str):
        for part in key.split("."):
            m = re.fullmatch(r"([A-Za-z_]+)((?:\[[0-9]+\])*)", part.strip())
            if m is None or not isinstance(d, dict):
                return None
            d = d.get(m.group(1))
            for i in re.findall(r"\[([0-9]+)\]", m.group(2)):
                d = d[int(i)] if isinstance(d, list) and int(i) < len(d) else None
        return d

    before, after = full.to_dict(), smoke.to_dict()
    out = []
    for item in sets or ():
        key = str(item).partition("=")[0].strip()
        if key != "name" and at(before, key) != at(after, key):
            out.append(f"note: --smoke replaces --set {key} ({at(before, key)!r} -> {at(after, key)!r})")
    return out

