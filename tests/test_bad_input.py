"""Bad specs and command lines stop before anything starts: one line naming the field and value, exit 2,
nothing written to the records."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

GOOD = {
    "name": "bad",
    "data": {"dataset": "digits", "train_subset": 64},
    "model": {"name": "resnet8"},
    "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
    "arms": [{"optimizer": "sgd", "decay": "coupled", "lr": {"low": 0.01, "high": 0.1},
              "weight_decay": {"low": 0.001, "high": 0.1}}],
    "search": {"sampler": "grid", "points": 2, "seeds": [0]},
    "execution": {"members_per_trial": 4},
}


def mutate(path, value):
    spec = copy.deepcopy(GOOD)
    *parents, last = path
    node = spec
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return spec


DELETE = object()

# (what, spec mutation or raw text, extra args, text the one-line message must contain)
CASES = [
    ("unknown top-level key", (["epochs"], 3), [], "unknown key 'epochs'"),
    ("unknown nested key", (["train", "lr"], 0.1), [], "unknown key 'train.lr'"),
    ("wrong type", (["train", "epochs"], "ten"), [], "train.epochs"),
    ("bool for int", (["train", "batch_size"], True), [], "train.batch_size"),
    ("lr low <= 0 on a log scale", (["arms", 0, "lr", "low"], 0.0), [], "arms[0].lr.low"),
    ("weight decay < 0", (["arms", 0, "weight_decay", "low"], -1e-4), [], "arms[0].weight_decay.low"),
    ("low > high", (["arms", 0, "lr", "high"], 0.001), [], "low <= high"),
    ("empty grid", (["search", "points"], 0), [], "search.points"),
    ("empty grid on one axis", (["arms", 0, "lr", "points"], 0), [], "arms[0].lr.points"),
    ("10^6 grid points", (["search", "points"], 1000), [], "exceeds"),
    ("unknown optimizer", (["arms", 0, "optimizer"], "rmsprop"), [], "optimizer='rmsprop'"),
    ("unknown decay mode", (["arms", 0, "decay"], "l2"), [], "decay='l2'"),
    ("GPU fraction above 1", (["execution", "gpus_per_trial"], 1.5), [], "gpus_per_trial=1.5"),
    ("missing dataset path", (["data"], {"dataset": "parquet", "path": "/nonexistent/cifar"}), [], "data.path"),
    ("unknown dataset", (["data", "dataset"], "imagenet"), [], "dataset='imagenet'"),
    ("study name with a path separator", (["name"], "../escape"), [], "name='../escape'"),
    ("unknown model", (["model", "name"], "resnet19"), [], "model.name"),
    ("unknown schedule", (["train", "schedule"], "linear"), [], "schedule='linear'"),
    ("warm-up longer than the run", (["train", "warmup_epochs"], 5.0), [], "warmup_epochs"),
    ("betas outside [0, 1)", (["arms", 0, "betas"], [0.9, 1.0]), [], "betas"),
    ("unknown sampler", (["search", "sampler"], "bohb"), [], "sampler='bohb'"),
    ("tpe without trials", (["search", "sampler"], "tpe"), [], "search.trials"),
    ("duplicate seeds", (["search", "seeds"], [0, 0]), [], "search.seeds"),
    ("no arms and no members", (["arms"], []), [], "arms"),
    ("unknown metric", (["search", "metric"], "accuracy"), [], "metric='accuracy'"),
    ("members per trial 0", (["execution", "members_per_trial"], 0), [], "members_per_trial"),
    ("unreachable --address", None, ["--address", "127.0.0.1:9"], "--address"),
    ("malformed --address", None, ["--address", "nowhere"], "--address"),
    ("not YAML", "name: [unclosed", [], "invalid YAML"),
    ("top level not a mapping", "- 1\n- 2\n", [], "mapping"),
]


@pytest.fixture(scope="module")
def corrupt_parquet(tmp_path_factory):
    d = tmp_path_factory.mktemp("corrupt")
    (d / "train.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    (d / "test.parquet").write_bytes(b"garbage")
    return d


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _study(capsys, argv) -> Result:
    """The real CLI entry point, in this process (a subprocess per case would mostly time imports)."""
    from study.cli import main

    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    return Result(code, out.out, out.err)


@pytest.fixture
def run_spec(tmp_path, capsys):
    def run(spec_text, extra):
        spec = tmp_path / "spec.yaml"
        spec.write_text(spec_text)
        home = tmp_path / "home"
        return _study(capsys, ["--home", str(home), "run", str(spec), *extra]), home
    return run


def _assert_refused(out, home, needle):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr  # one line
    assert lines[0].startswith("study: error:") and needle in lines[0], lines[0]
    assert not home.exists() or not any(home.rglob("*")), sorted(home.rglob("*"))  # nothing recorded


@pytest.mark.parametrize("what,change,extra,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_anything_starts(run_spec, what, change, extra, needle):
    if isinstance(change, str):
        text = change
    else:
        text = yaml.safe_dump(mutate(*change) if change else GOOD)
    out, home = run_spec(text, extra)
    _assert_refused(out, home, needle)


def test_corrupt_parquet_is_refused(run_spec, corrupt_parquet):
    spec = mutate(["data"], {"dataset": "parquet", "path": str(corrupt_parquet)})
    out, home = run_spec(yaml.safe_dump(spec), [])
    _assert_refused(out, home, "cannot read")


def test_explicit_members_are_refused_by_run(run_spec):
    spec = mutate(["arms"], [])
    spec["members"] = [{"optimizer": "sgd", "decay": "coupled", "lr": 0.1, "weight_decay": 1e-4}]
    out, home = run_spec(yaml.safe_dump(spec), [])
    _assert_refused(out, home, "study train")


def test_console_command_refuses_with_exit_code_2(tmp_path):
    """The installed `study` command itself (not just main()) exits 2 with one line."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(mutate(["train", "epochs"], 0)))
    exe = Path(sys.executable).with_name("study")
    out = subprocess.run([str(exe), "--home", str(tmp_path / "home"), "run", str(spec)], capture_output=True,
                         text=True, timeout=120)
    _assert_refused(out, tmp_path / "home", "train.epochs")


@pytest.mark.parametrize("argv,needle", [
    (["resume", "no/such"], "name='no/such'"),
    (["export", "../x", "--out", "o"], "no study '../x'"),
    (["bench", "--members", "0"], "--members"),
])
def test_bad_command_lines(tmp_path, capsys, argv, needle):
    home = tmp_path / "home"
    out = _study(capsys, ["--home", str(home), *argv])
    assert out.returncode == 2, out.stderr[-2000:]
    assert needle in out.stderr.strip().splitlines()[-1]
