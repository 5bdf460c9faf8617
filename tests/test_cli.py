"""The CLI's own features: `study list`, `--set` overrides, the progress bar and its ETA, help examples.
Real stores throughout: one finished `study run --smoke` of the quickstart (module fixture), real Optuna leases."""

import argparse
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.cli import build_parser
from study.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"


def study(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "STUDY_HOME": "/nonexistent-study-home"})


def files_under(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def smoke_home(smoke_study):
    """The session's finished quickstart --smoke study (conftest), started with --set search.seeds=[3,4]."""
    return smoke_study.home


# --------------------------------------------------------------------------- study list

def test_list_shows_a_finished_study(smoke_home):
    before = files_under(smoke_home)
    out = study("--home", str(smoke_home), "list")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if "quickstart-smoke" in line)
    done, planned, failed = re.search(r"quickstart-smoke\s+(\d+)/(\d+)\s+(\d+)\s", row).groups()
    assert int(done) == int(planned) > 0 and failed == "0"
    assert "finished" in row and "running" not in row
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row)  # last update
    assert "1 study in" in out.stdout
    import torch
    assert f"torch {torch.__version__.split('+')[0]}" in row and "(cpu" in row  # the versions and the device
    assert files_under(smoke_home) == before  # looking writes nothing


def test_set_override_is_recorded_with_the_study(smoke_home):
    from study.stores import default_tracking_uri
    from study.tracking import recorded_spec

    spec = recorded_spec(default_tracking_uri(smoke_home), "quickstart-smoke")
    assert spec.search.seeds == (3,)  # --set applied to the file, then --smoke kept the first seed
    assert spec.train.epochs == 1
    # a smoke run records in an experiment of its own (never beside the real study's) and refines nothing
    assert spec.experiment == "quickstart-smoke" and spec.search.refine == 0
    from mlflow.tracking import MlflowClient
    names = {e.name for e in MlflowClient(default_tracking_uri(smoke_home)).search_experiments()}
    assert "quickstart" not in names and "quickstart-smoke" in names


def test_list_on_an_absent_home_is_one_line_and_creates_nothing(tmp_path):
    home = tmp_path / "no" / "home"
    out = study("--home", str(home), "list")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "invalid --home" in out.stderr and str(home) in out.stderr
    assert not (tmp_path / "no").exists()


def test_list_on_an_empty_home_says_so(tmp_path):
    out = study("--home", str(tmp_path), "list")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) == 1 and "no studies" in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_list_with_a_missing_tracking_file_creates_nothing(tmp_path):
    db = tmp_path / "sub" / "mlflow.db"
    out = study("list", "--tracking-uri", f"sqlite:///{db}")
    assert out.returncode == 2 and "--tracking-uri" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sub").exists()


def test_read_lease_reads_a_real_lease_and_never_creates_a_store(tmp_path):
    from study.search import Lease, open_storage, read_lease

    absent = tmp_path / "absent" / "optuna.db"
    assert read_lease(f"sqlite:///{absent}", "x") == (False, "no lease")
    assert not absent.parent.exists()
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    lease = Lease(open_storage(url), "x")
    held, who = read_lease(url, "x")
    assert held is True and f"pid {os.getpid()}" in who
    assert read_lease(url, "other") == (False, "no lease")
    lease._stop.set()  # no more heartbeats: a holder whose process is gone on this host is stale at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lease.study.set_user_attr("pid", int(dead.stdout))
    assert read_lease(url, "x")[0] is False
    lease.study.set_user_attr("pid", os.getpid())
    lease.release()
    assert read_lease(url, "x") == (False, "no lease")


# --------------------------------------------------------------------------- --set

def test_set_overrides_spec_fields_before_validation():
    out = study("validate", str(QUICKSTART), "--set", "train.epochs=3", "--set", "search.seeds=[0,1,2]")
    assert out.returncode == 0, out.stderr
    assert "3 epochs" in out.stdout and f"{(7 * 13 + 7 * 10) * 3} members" in out.stdout  # 7 × 13 and 7 × 10, 3 seeds


@pytest.mark.parametrize("flag, field", [("train.epochs=-1", "train.epochs"), ("train.epochs=ten", "train.epochs"),
                                         ("train.epoch=3", "train.epoch"), ("arms[0].lr.low=0", "arms[0].lr.low"),
                                         ("arms[7].lr.low=0.1", "arms[7]"), ("search.seeds=[0,", "search.seeds"),
                                         ("train.epochs", "KEY=VALUE")])
def test_a_bad_set_is_one_line_naming_the_field(flag, field, tmp_path):
    out = study("--home", str(tmp_path / "home"), "run", str(QUICKSTART), "--set", flag)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("study: error:") and field in lines[0], lines
    assert not (tmp_path / "home").exists()


def test_set_error_is_the_line_the_file_would_give(tmp_path):
    bad = tmp_path / "quickstart.yaml"
    text = QUICKSTART.read_text()
    assert "epochs: 20\n" in text
    bad.write_text(text.replace("epochs: 20\n", "epochs: -1\n"))
    from_file = study("validate", str(bad))
    from_flag = study("validate", str(QUICKSTART), "--set", "train.epochs=-1")
    assert from_file.returncode == from_flag.returncode == 2
    assert from_file.stderr == from_flag.stderr


def test_set_reaches_nested_lists_and_new_sections(tmp_path):
    from study.spec import load_spec

    spec = load_spec(QUICKSTART, overrides=["arms[1].weight_decay.high=0.5", "tracking.experiment=other",
                                            "arms[0].lr={low: 0.02, high: 0.2, points: 3}"])
    assert spec.arms[1].weight_decay.high == 0.5 and spec.experiment == "other"
    assert (spec.arms[0].lr.low, spec.arms[0].lr.high, spec.arms[0].lr.points) == (0.02, 0.2, 3)
    plain = tmp_path / "plain.yaml"
    plain.write_text("arms:\n  - {optimizer: sgd, decay: coupled, lr: {low: 0.01, high: 0.1}, "
                     "weight_decay: {low: 0.001, high: 0.1}}\n")
    assert load_spec(plain, overrides=["train.epochs=2", "model.name=resnet20"]).train.epochs == 2


def test_an_arms_optimizer_settings_are_keys_of_the_arm_checked_against_its_options(tmp_path):
    """Settings sit beside `optimizer:` in a file and in --set; each is parsed and range-checked as the optimizer's
    options dataclass declares it (study/registry.py), another optimizer's setting is refused naming the own ones,
    and a member carries them to the optimizer."""
    from study.spec import SpecError, grid_members, load_spec

    plain = tmp_path / "arms.yaml"
    plain.write_text("arms:\n  - {optimizer: rmsprop, decay: decoupled, alpha: 0.9, centered: true, "
                     "lr: {low: 0.001, high: 0.01}, weight_decay: {low: 0.001, high: 0.1}}\n"
                     "  - {optimizer: sgd, decay: coupled, lr: {low: 0.01, high: 0.1}, weight_decay: {low: 0.001, high: 0.1}}\n"
                     "search: {points: 2}\n")
    spec = load_spec(plain, overrides=["arms[0].momentum=0.5", "arms[1].nesterov=true"])
    assert dict(load_spec(plain, overrides=["arms[1].momentum=1e-40"]).arms[1].options) == {"momentum": 1e-40}  # as before
    assert dict(spec.arms[0].options) == {"alpha": 0.9, "centered": True, "momentum": 0.5}
    members = grid_members(spec)
    assert members[0].optimizer_kwargs() == {"alpha": 0.9, "eps": 1e-8, "momentum": 0.5, "centered": True}
    assert members[-1].optimizer_kwargs() == {"momentum": 0.9, "nesterov": True}
    for sets, message in ((["arms[0].alpha=1"], "invalid arms[0].alpha: must lie in [0, 1), but got alpha=1.0"),
                          (["arms[0].centered=3"], "invalid arms[0].centered: expected true or false"),
                          (["arms[1].betas=[0.8, 0.9]"], "invalid arms[1].betas: optimizer sgd takes no betas "
                                                          "(its settings: momentum, nesterov)"),
                          (["arms[1].momentum=0", "arms[1].nesterov=true"],
                           "invalid arms[1].nesterov: Nesterov momentum needs momentum > 0")):
        with pytest.raises(SpecError) as e:
            load_spec(plain, overrides=sets)
        assert message in str(e.value), (sets, str(e.value))
    with pytest.raises(SpecError, match=r"unknown key 'arms\[1\]\.gamma'; allowed keys in arms\[1\]: optimizer, "
                                        r"decay, lr, weight_decay, momentum, nesterov"):
        plain.write_text(plain.read_text().replace("decay: coupled,", "decay: coupled, gamma: 2,"))
        load_spec(plain)


# identities as the version before the settings were gathered into `options` computed them (a3a817a): a study
# recorded then is resumed under the same identity, from the spec.json it wrote (every setting a field, unset None)
RECORDED = {
    "df694232e04f8427": [{"optimizer": "sgd", "decay": "coupled"}],
    "2e602a0dfbdf1db6": [{"optimizer": "sgd", "decay": "decoupled", "momentum": 0.5, "nesterov": True}],
    "d7a6da00360f661f": [{"optimizer": "adam", "decay": "independent", "betas": [0.8, 0.99], "eps": 1e-6},
                         {"optimizer": "adagrad", "decay": "coupled", "eps": 1e-9}],
}


@pytest.mark.parametrize("identity", sorted(RECORDED))
def test_a_spec_recorded_before_the_options_were_gathered_loads_as_the_same_spec(identity):
    import json

    from study.spec import MemberSpec, spec_from_dict

    ranges = [{"lr": {"low": 0.01 if a["optimizer"] == "sgd" else 0.001, "high": 0.1 if a["optimizer"] == "sgd" else 0.01},
               "weight_decay": {"low": 1e-4, "high": 1e-2}} for a in RECORDED[identity]]
    written = {"name": "pin", "data": {"dataset": "digits"}, "model": {"name": "resnet8"},
               "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
               "arms": [{**a, **r} for a, r in zip(RECORDED[identity], ranges)],
               "search": {"sampler": "grid", "points": 2, "seeds": [0, 1]}}
    spec = spec_from_dict(written)
    assert spec.identity() == identity
    old = json.loads(json.dumps(spec.to_dict()))  # the recorded form of then: every optimizer's settings, unset None
    old["arms"] = [{**{k: None for k in ("momentum", "nesterov", "betas", "eps")}, **a} for a in old["arms"]]
    assert spec_from_dict(old) == spec and spec_from_dict(old).identity() == identity
    assert spec_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec  # today's form round-trips
    member = MemberSpec("adam", "coupled", 0.01, 0.1, 3, (("betas", (0.8, 0.99)),))
    then = {"optimizer": "adam", "decay": "coupled", "lr": 0.01, "weight_decay": 0.1, "seed": 3, "momentum": None,
            "nesterov": None, "betas": [0.8, 0.99], "eps": None}  # a checkpoint's member of then
    assert MemberSpec.from_dict(then) == member == MemberSpec.from_dict(json.loads(json.dumps(member.to_dict())))


# --------------------------------------------------------------------------- progress

class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_is_one_updating_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    out = FakeTTY()
    p = Progress(total=8, done=0, epochs=2, metric="test_loss", out=out, refresh=0.0)
    p.print()
    p.epochs(4, seconds=1.0, key="a", epoch=1)
    p.member_done("sgd-coupled", 0.41)
    p.member_done("sgd-coupled", None)
    p.member_done("sgd-coupled", float("nan"), diverged=True)
    p.retry("a")
    p.print()
    text = out.getvalue()
    assert "\n" not in text and text.count("\r") >= 3  # redrawn in place
    last = text.rsplit("\r", 1)[1]
    assert "2/8 members" in last and "1 failed" in last and "1 diverged" in last and "1 retried" in last
    assert "4/16 epochs" in last and "best single-seed test_loss: sgd-coupled 0.41" in last
    p.message("[study] refine sgd-coupled: …")
    assert out.getvalue().count("\n") == 1 and out.getvalue().endswith("\x1b[J")  # the bar drawn again below
    p.close()
    assert out.getvalue().endswith("\n")


def test_progress_on_a_terminal_has_a_row_per_array_in_flight(monkeypatch):
    """Below the bar, one row per array training (its arm and size, its epoch, its pace), redrawn in place: the
    cursor goes back to the end of the bar's line after each drawing (a line someone else writes lands after the
    bar, and the next drawing starts below it, never erasing it); an array that ended loses its row; a message
    clears the block and the bar comes back below it; the closing bar stands alone; a short terminal gets fewer rows."""
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setenv("LINES", "40")
    out = FakeTTY()
    p = Progress(total=82, done=0, epochs=20, metric="test_loss", out=out, refresh=0.0)
    p.epochs(41, seconds=1.5, key="t1", epoch=1, label="sgd-coupled, 41 members")
    p.epochs(41, seconds=1.2, key="t2", epoch=1, label="sgd-independent, 41 members")
    mark = len(out.getvalue())
    p.print()
    block = out.getvalue()[mark:]
    bar = p.bar(300)
    assert block.startswith("\r[study] ") and block.count("\n") == 2
    assert "\n  sgd-coupled, 41 members: epoch 1/20, 1.5 s/epoch" in block
    assert "\n  sgd-independent, 41 members: epoch 1/20, 1.2 s/epoch" in block
    assert block.endswith(f"\x1b[2A\r\x1b[{len(bar)}C")  # back to the end of the bar's line
    p.array_done("t1")
    mark = len(out.getvalue())
    p.print()
    again = out.getvalue()[mark:]
    assert again.startswith("\r[study] ") and "\x1b[J" in again  # over the bar, everything below it cleared
    assert again.count("\n") == 1 and "sgd-coupled, 41" not in again  # the ended array's row is gone
    mark = len(out.getvalue())
    p.message("[study] refine …")
    assert out.getvalue()[mark:].startswith("\r\x1b[J[study] refine …\n")
    monkeypatch.setenv("LINES", "3")  # a pane of three lines: no room for rows under the bar
    mark = len(out.getvalue())
    p.print()
    assert "\n" not in out.getvalue()[mark:]
    mark = len(out.getvalue())
    p.close()
    assert "\n  " not in out.getvalue()[mark:] and out.getvalue().endswith("\n")  # the bar alone, then a newline
    mark = len(out.getvalue())
    p.print()  # a ticker that woke as the bar closed draws nothing more
    assert out.getvalue()[mark:] == ""


def test_progress_on_a_terminal_keeps_its_clock_moving_before_any_report():
    """While Ray starts and the first epoch trains nothing is reported; on a terminal the bar is redrawn anyway,
    so the elapsed time moves (the study never looks frozen), and close() stops the redrawing."""
    import time

    out = FakeTTY()
    p = Progress(total=8, done=0, epochs=2, metric="test_loss", out=out)
    p.started -= 3.0                      # as if the study started three seconds ago
    p.print()
    p.tick(every=0.02)
    deadline = time.time() + 30
    while out.getvalue().count("\r") < 5:
        assert time.time() < deadline, out.getvalue()
        time.sleep(0.02)
    assert "0:03" in out.getvalue().rsplit("\r", 1)[1]
    p.close()
    p.ticker.join(timeout=30)             # the redrawing stops with the bar
    assert not p.ticker.is_alive()


def test_progress_ranks_settings_once_an_arm_has_one():
    """Single seeds until a setting's seeds have all finished; then the best mean over seeds, as the landscape
    ranks (a lucky seed of a worse setting no longer shows as the best)."""
    out = io.StringIO()
    p = Progress(total=8, done=0, epochs=2, metric="test_loss", interval=3600, out=out)
    p.member_done("sgd-coupled", 0.30)  # a lucky seed
    assert "best single-seed test_loss: sgd-coupled 0.3000" in p.bar(300)
    p.setting_done("sgd-coupled", 0.45, 0.1, 0.01, 2)
    p.setting_done("sgd-coupled", float("nan"), 0.3, 0.1, 2)  # every seed diverged: never a best
    p.setting_done("sgd-coupled", 0.41, 0.05, 0.01, 2)
    p.setting_done("sgd-coupled", 0.43, 0.02, 0.01, 2)
    assert "best test_loss (mean over seeds): sgd-coupled 0.4100" in p.bar(300)
    assert p.best_setting["sgd-coupled"] == (0.41, 0.05, 0.01, 2)
    p.member_done("sgd-independent", 0.38)  # an arm without a finished setting yet keeps its single seed, said so
    assert "best test_loss: sgd-coupled 0.4100 (mean over seeds), sgd-independent 0.3800 (one seed)" in p.bar(300)


def test_progress_bar_fits_the_terminal():
    p = Progress(total=8, done=0, epochs=2, metric="test_loss", out=FakeTTY())
    for arm in ("sgd-coupled", "sgd-independent", "adam-decoupled", "adam-coupled"):
        p.member_done(arm, 0.5)
    assert len(p.bar(60)) <= 60


def test_progress_off_a_terminal_prints_plain_lines():
    out = io.StringIO()
    p = Progress(total=8, done=0, epochs=2, metric="test_error", interval=3600, out=out)
    p.print()
    p.epochs(4, seconds=1.0, key="a", epoch=1)  # within the interval: no line
    p.print()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert lines[1].startswith("[study] 0/8 members done") and "best single-seed test_error" in lines[1]


def test_no_eta_before_a_full_epoch_then_a_sane_one():
    p = Progress(total=100, done=0, epochs=10, metric="test_loss", out=io.StringIO())
    p.started -= 3600  # an hour of Ray start-up, data loading and compilation before the first report
    assert p.eta() == "?"
    p.epochs(20, seconds=5.0, key="a", epoch=1)  # 20 members, one 5-s epoch: 4 member-epochs/s
    assert p.eta_seconds() == pytest.approx((1000 - 20) / 4, rel=0.01)  # not 3600/20 × 980 s (49 hours)
    p.epochs(20, seconds=5.0, key="b", epoch=1)  # a second array at the same time: the rates add up
    assert p.eta_seconds() == pytest.approx((1000 - 40) / 8, rel=0.01)
    p.epochs(20, seconds=5.0, key="a", epoch=1)  # a retried array reports epoch 1 again: not counted twice
    assert p.epochs_done == 40


def test_no_eta_from_unmeasured_reports():
    """Reports without an epoch time or array (older callers): no ETA until 30 s after the first report."""
    p = Progress(total=100, done=0, epochs=10, metric="test_loss", out=io.StringIO())
    p.started -= 3600
    p.epochs(20)
    p.epochs(20)
    assert p.eta() == "?"
    p._first_report = (time.time() - 60, 20)
    assert p.eta_seconds() == pytest.approx((1000 - 40) / (20 / 60), rel=0.05)


def test_eta_is_zero_when_nothing_is_left():
    p = Progress(total=2, done=2, epochs=3, metric="test_loss", out=io.StringIO())
    assert p.eta() == "0:00"


# --------------------------------------------------------------------------- help

COMMANDS = ("train", "validate", "run", "resume", "list", "export", "recommend", "bench", "ui")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_examples_use_real_flags(command):
    """Every example in a subcommand's help parses with that command's parser."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    examples = [line.split("#")[0].strip() for line in (sub.epilog or "").splitlines() if line.startswith("  study ")]
    assert examples, f"study {command} --help shows no examples"
    for ex in examples:
        argv = ex.split()[1:]
        argv = [a.replace("SPEC", str(QUICKSTART)) for a in argv]
        assert command in argv, ex
        parser.parse_args(argv)  # SystemExit (a failing test) on a flag the command does not take


def test_every_argument_of_every_command_says_what_it_is():
    """`study CMD --help` explains each positional and option (hidden ones aside), not only its name."""
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subs) == set(COMMANDS)
    silent = [f"study {name} {a.option_strings[-1] if a.option_strings else a.dest}"
              for name, sub in subs.items() for a in sub._actions
              if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS and not (a.help or "").strip()]
    assert not silent, f"arguments without help: {silent}"


# --------------------------------------------------------------------------- interrupts and closed pipes

def test_ctrl_c_in_study_train_is_exit_130_with_one_line(tmp_path):
    """A command with no clean stop of its own (here `study train`) ends on Ctrl-C with exit 130 and one line,
    not a traceback."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "train", str(QUICKSTART), "--out",
                             str(tmp_path / "r.json"), "--set", "train.epochs=1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # training has begun: the per-epoch table's header
            if line.split()[:2] == ["epoch", "member"]:
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("note: ")]  # train's note on run-only fields
    assert proc.returncode == 130 and lines == ["study: interrupted"], err[-3000:]
    assert not (tmp_path / "r.json").exists()


def test_output_into_a_closed_pipe_ends_quietly():
    """`study validate … | head -n 1`: the reader goes away; no BrokenPipeError traceback."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # output buffered, as usual
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "validate", str(QUICKSTART)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err[-3000:]
    assert proc.returncode == 1


def test_a_batch_larger_than_the_training_set_is_said(tmp_path, capsys):
    """train.batch_size past the training images is taken as the whole set each step: validate and train say so."""
    from study.cli import main

    rc = main(["validate", str(QUICKSTART), "--set", "data.train_subset=20"])
    out = capsys.readouterr().out
    assert rc == 0 and "warning: train.batch_size 32 is larger than the 20 training images: every step takes all 20 " \
                       "(one step per epoch)" in out, out
    assert main(["validate", str(QUICKSTART)]) == 0 and "batch_size" not in capsys.readouterr().out
    rc = main(["train", str(QUICKSTART), "--out", str(tmp_path / "r.json"), "--set", "data.train_subset=20",
               "--set", "train.epochs=1", "--set", "search.seeds=[0]"])
    assert rc == 0 and "warning: train.batch_size 32 is larger than the 20" in capsys.readouterr().err


def test_a_warm_up_or_milestone_that_rounds_to_nothing_is_said(capsys):
    """Warm-up and step milestones are fractions the trainer rounds to steps: validate says when one is lost."""
    from study.cli import main

    base = [str(QUICKSTART), "--set", "train.epochs=1"]   # 400 images / 32 = 12 steps
    assert main(["validate", *base, "--set", "train.warmup_epochs=0.05"]) == 0
    assert "train.warmup_epochs 0.05 is 0.6 of this run's 12 steps per epoch, rounded to 1: no step is warmed up" \
        in capsys.readouterr().out
    assert main(["validate", *base, "--set", "train.warmup_epochs=0.25"]) == 0    # 3 steps: a warm-up
    assert "warmup" not in capsys.readouterr().out
    assert main(["validate", *base, "--set", "train.schedule=step", "--set", "train.milestones=[0.45,0.5,0.99]"]) == 0
    out = capsys.readouterr().out
    assert "train.milestones 0.45, 0.5 fall on the same step 6 of 12: their drops happen at once" in out, out
    assert "train.milestones 0.99 falls at step 12 of a run of 12 steps: its drop never happens" in out, out
    assert main(["validate", *base, "--set", "train.schedule=step", "--set", "train.milestones=[0.5,0.75]"]) == 0
    assert "milestones" not in capsys.readouterr().out


def test_a_home_whose_store_mlflow_tracking_uri_overrides_is_said_once(tmp_path, capsys, monkeypatch):
    """--home names a home, but MLFLOW_TRACKING_URI decides where the records are: one note says so."""
    from study.cli import main

    other = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    home = tmp_path / "home"
    main(["--home", str(home), "list"])
    err = capsys.readouterr().err
    assert err.count("note: the records are in MLFLOW_TRACKING_URI=sqlite:///") == 1, err
    assert f"not sqlite:///{home / 'mlflow.db'}" in err
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    main(["--home", str(home), "list"])
    assert "MLFLOW_TRACKING_URI" not in capsys.readouterr().err


def test_train_says_which_settings_it_leaves_to_study_run(tmp_path, capsys):
    from study.cli import main

    base = ["train", str(QUICKSTART), "--out", str(tmp_path / "r.json"), "--set", "data.train_subset=32",
            "--set", "train.epochs=1", "--set", "search.seeds=[0]", "--set", "execution.members_per_trial=78"]
    assert main([*base, "--set", "execution.max_failures=5", "--set", "search.refine=1"]) == 0
    err = capsys.readouterr().err
    assert "left to `study run`: execution.max_failures, search.refine, tracking.experiment" in err, err
