"""The `study` command line: its subcommands, flags, help and examples (study/cli.py runs them), and the
refusal of empty values. Importing it loads nothing heavy (`study --help` answers at once).
"""

from __future__ import annotations

import argparse

from .spec import LARGE_MEMBER_EPOCHS, LARGE_MEMBERS, SpecError
from .registry import CONV_CHOICES

AUTO_BOOL = {"auto": None, "true": True, "false": False}  # --channels-last, --cudnn-benchmark -> the spec's value

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


def _sub(sub, name: str, helptext: str, parents=()) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=helptext, description=helptext[:1].upper() + helptext[1:] + ".",
                          epilog=EPILOGS[name], formatter_class=argparse.RawDescriptionHelpFormatter,
                          parents=list(parents))


def _spec_flags(recorded: bool) -> argparse.ArgumentParser:
    """SPEC and the flags that change it (train, validate, run); `recorded`: run keeps them with the study."""
    f = argparse.ArgumentParser(add_help=False)
    f.add_argument("spec", help="a spec file (YAML), e.g. search_spaces/quickstart.yaml")
    f.add_argument("--data-path", help="replaces the spec's data.path (e.g. a folder with CIFAR-10 Parquet files)")
    f.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help=SET_HELP if recorded else SET_HELP.replace("; recorded with the study", ""))
    f.add_argument("--allow-large", action="store_true", help=LARGE_HELP)
    return f


def _records_flags() -> argparse.ArgumentParser:
    """The commands that read or write a home's records: --tracking-uri, and --home after the subcommand too."""
    f = argparse.ArgumentParser(add_help=False)
    f.add_argument("--tracking-uri", help=TRACKING_HELP)
    f.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return f


def _name_arg() -> argparse.ArgumentParser:
    f = argparse.ArgumentParser(add_help=False)
    f.add_argument("name", help="the study's name (`study list` shows them)")
    return f


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="study", description="Weight decay vs learning rate studies on member arrays.",
                                epilog=EPILOGS["main"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", help="studies' home directory (default $STUDY_HOME or ~/studies)")
    sub = p.add_subparsers(dest="command", required=True)
    spec, spec_recorded, records, name = _spec_flags(False), _spec_flags(True), _records_flags(), _name_arg()

    t = _sub(sub, "train", "train a spec's members in this process: no Ray, Optuna or MLflow", [spec])
    t.add_argument("--out", required=True, help="result JSON")
    t.add_argument("--device", choices=["cpu", "cuda"], help="replaces train.device")
    t.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="replaces train.precision (auto: bf16 autocast on CUDA, fp32 on a CPU)")
    t.add_argument("--channels-last", choices=["auto", "true", "false"],
                   help="replaces train.channels_last (auto: on for CUDA): channels-last activations and conv weights")
    t.add_argument("--cudnn-benchmark", choices=["auto", "true", "false"],
                   help="replaces train.cudnn_benchmark (auto: on for CUDA): cuDNN autotunes each convolution shape")
    t.add_argument("--conv", choices=CONV_CHOICES,
                   help="replaces train.conv: each member convolution grouped, as a batched GEMM (bmm), or auto (the "
                        "table $STUDY_CONV_TABLE measured for this device, else grouped)")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="replaces train.compile (left out: the spec's, auto by default: on for CUDA): torch.compile "
                        "the forward and loss (compile time is reported)")

    t.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replaces train.cuda_graph: record the whole step as a CUDA graph and replay it; on a CPU the "
                        "same static-buffer path runs without recording")

    v = _sub(sub, "validate", "check a spec without running anything", [spec])
    v.add_argument("--smoke", action="store_true", help="check what `study run --smoke` would run")

    for cmd, helptext, first in (("run", "run a study on Ray Tune with Optuna and MLflow", spec_recorded),
                                 ("resume", "finish a study whose driver died", name)):
        r = _sub(sub, cmd, helptext, [first, records])
        r.add_argument("--address", help="Ray cluster address (default: start a local Ray; RAY_ADDRESS is honoured)")
        r.add_argument("--storage", help=STORAGE_HELP)
        if cmd == "run":
            r.add_argument("--smoke", action="store_true", help="a few members and one epoch")

    ls = _sub(sub, "list", "the studies in a home: members done, failed, running or not, last update", [records])
    ls.add_argument("--storage", help="Optuna storage holding the studies' driver leases "
                                      "(default sqlite:///HOME/NAME/optuna.db per study)")

    e = _sub(sub, "export", "heatmaps, λ*(η) slopes, landscape.json and an HTML report from MLflow", [name, records])
    e.add_argument("--out", required=True, help="folder for the figures, landscape.json and report.html")
    e.add_argument("--metric", help="final metric to map (default: the study's search.metric)")
    e.add_argument("--format", default="png,svg,html", help="comma-separated: png, svg, html")
    e.add_argument("--dashboard", default="default", help="a dashboards/NAME.yaml or a path to one")
    e.add_argument("--no-log", action="store_true", help="write the files only; log nothing to the parent run")

    c = _sub(sub, "recommend", "the best weight decay at a learning rate, from a study's fitted ridge", [name, records])
    c.add_argument("--lr", required=True, help="learning rate η, within the study's measured range")
    c.add_argument("--arm", help="optimizer-decay, e.g. sgd-coupled (default: every arm)")
    c.add_argument("--metric", help="final metric whose landscape to use (default: the study's search.metric)")

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
    b.add_argument("--workers", type=int, help="DataLoader workers of the baseline (default 2)")
    b.add_argument("--threads", type=int, help="torch CPU threads")
    b.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA, fp32 on a CPU (the plain loop uses the same)")
    b.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"],
                   help="channels-last activations and conv weights (auto: on for CUDA; the plain loop follows)")
    b.add_argument("--cudnn-benchmark", default="auto", choices=["auto", "true", "false"],
                   help="cuDNN autotunes each convolution shape (auto: on for CUDA; the plain loop follows)")
    b.add_argument("--compile", nargs="?", const="on", default="auto", choices=["auto", "off", "on", "both"],
                   help="torch.compile the array step: as a study does (auto: compiled on CUDA, eager on a CPU), "
                        "compiled rows only (--compile), eager only (off), or eager and compiled rows in the same "
                        "run (--compile both); compile time is reported, not timed")
    b.add_argument("--conv", default="auto", choices=CONV_CHOICES,
                   help="member convolutions: grouped, bmm (batched GEMM), or auto (the device's measured table, "
                        "else grouped)")
    b.add_argument("--cuda-graph", action="store_true",
                   help="record each array's whole step as a CUDA graph and replay it (on a CPU: the same static-"
                        "buffer path, without recording)")
    b.add_argument("--no-baseline", action="store_true", help="skip the plain single-model loop")
    b.add_argument("--json", help="write the results here")

    u = _sub(sub, "ui", "MLflow UI (and optuna-dashboard when installed) on 127.0.0.1", [records])
    u.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    u.add_argument("--port", type=int, default=5000, help="MLflow's port (default 5000); optuna-dashboard takes the next")
    u.add_argument("--study", help="also serve this study's Optuna storage with optuna-dashboard")
    u.add_argument("--storage", help="the --study's Optuna storage, if not its default (sqlite:///HOME/NAME/optuna.db)")
    return p


POSITIONALS = {"spec": "SPEC", "name": "NAME"}


HOMELESS = {"train": "--out", "validate": "the terminal", "bench": "the terminal and --json"}


def refuse_empty_values(args) -> None:
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
