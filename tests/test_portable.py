"""A studies' home moved or copied to another folder works on its own: MLflow records artifact locations as
absolute URIs, so without adoption (tracking.adopt_home) a copy reads and writes the original's artifacts and
a moved home recreates the old folder. Real stores, real `study` commands, a real `mlflow server`."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from study.spec import spec_from_dict
from study.tracking import Tracker, adopt_home, ensure_store, log_export, read_study, recorded_spec
from test_service import run_ok, study_cmd

NAME = "quickstart-smoke"


def _uri(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow.db'}"


def _locations(home: Path) -> list[str]:
    """Every artifact location the store records: experiments' and runs'."""
    client = MlflowClient(_uri(home))
    exps = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in exps], max_results=1000)
    return [e.artifact_location for e in exps] + [r.info.artifact_uri for r in runs]


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _parent(home: Path, name: str = NAME) -> str:
    client = MlflowClient(_uri(home))
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, f"tags.study = '{name}' and tags.role = 'parent'")[0].info.run_id


def _check_own(home: Path, gone: Path) -> None:
    """Every location inside `home`, the parent's figures listed and read from there, nothing at `gone`."""
    own = (home / "artifacts").as_uri()
    assert all(loc.startswith(own) for loc in _locations(home)), _locations(home)
    parent = _parent(home)
    client = MlflowClient(_uri(home))
    figures = client.list_artifacts(parent, "landscape/test_loss/default")
    assert {"heatmaps.svg", "report.html", "landscape.json"} <= {Path(f.path).name for f in figures}
    local = mlflow.artifacts.download_artifacts(run_id=parent, artifact_path="landscape/test_loss/default/landscape.json",
                                                tracking_uri=_uri(home))
    kept = home / "artifacts" / parent / "artifacts" / "landscape" / "test_loss" / "default" / "landscape.json"
    assert json.loads(Path(local).read_text()) == json.loads(kept.read_text())  # read from the home's own folder
    assert (home / "artifacts" / parent / "artifacts" / "spec.json").is_file()
    assert not gone.exists(), f"{gone} was written to: {sorted(gone.rglob('*'))[:5]}"


@contextmanager
def _away(home: Path):
    """The original home renamed for the duration (a moved home: its old path does not exist)."""
    away = home.with_name(home.name + ".away")
    home.rename(away)
    try:
        yield away
    finally:
        shutil.rmtree(home, ignore_errors=True)  # anything written there would be a failure, already asserted
        away.rename(home)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ui_listing(home: Path, run_id: str, path: str = "") -> list[str]:
    """`study ui --home HOME` as a user starts it, then the UI's artifact listing of a run over HTTP."""
    port = _free_port()
    proc = subprocess.Popen(study_cmd(home, "ui", "--port", str(port)), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "no UI"
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/artifacts/list?run_id={run_id}&path={path}"
        with urllib.request.urlopen(url, timeout=30) as r:
            answer = json.loads(r.read())
        assert answer["root_uri"].startswith((home / "artifacts").as_uri()), answer
        return [Path(f["path"]).name for f in answer.get("files", [])]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture
def home(smoke_study) -> Path:
    """The session's finished smoke study (conftest; exported, so its parent run holds figures). Tests copy it or
    move it away and back, and check that nothing in it changed."""
    home = smoke_study.home
    assert (home / "artifacts").is_dir()
    assert all(loc.startswith((home / "artifacts").as_uri()) for loc in _locations(home))
    return home


# ---------------------------------------------------------------------------------------- whole homes

def test_copied_home_writes_only_into_the_copy(home, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    before = _files(home)
    out = run_ok(copy, "resume", NAME, timeout=600)  # reopens and closes the parent run, exports on it again
    assert "moved or copied" in out.stderr
    run_ok(copy, "export", NAME, "--out", str(copy / "x"))
    assert _files(home) == before  # not one file of the original added, changed or touched
    assert (copy / "x" / "report.html").is_file()
    _check_own(copy, tmp_path / "nothing-here")


def test_moved_home_shows_its_figures_resumes_and_exports(home, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(home, moved)
    with _away(home):  # the original is gone: only the moved home has the records and artifacts
        # `study ui` first, before any other command has opened the moved home: it adopts it itself
        run_id = next(p.name for p in (moved / "artifacts").iterdir() if (p / "artifacts" / "spec.json").is_file())
        assert "spec.json" in _ui_listing(moved, run_id)
        run_ok(moved, "resume", NAME, timeout=600)  # reads spec.json, reopens the parent run
        run_ok(moved, "export", NAME, "--out", str(moved / "x"))
        _check_own(moved, home)
        names = _ui_listing(moved, _parent(moved), "landscape/test_loss/default")
        assert {"heatmaps.svg", "report.html"} <= set(names), names
        assert not home.exists()


# ---------------------------------------------------------------------------------------- the store alone

SPEC = {"name": "carry", "arms": [{"optimizer": "sgd", "decay": "coupled", "lr": {"low": 0.01, "high": 0.3},
                                   "weight_decay": {"low": 1e-5, "high": 1e-3}}], "train": {"epochs": 1}}


def _small_home(home: Path) -> str:
    """A store as the driver makes it: ensure_store, the experiment and parent run with spec.json."""
    ensure_store(_uri(home), (home / "artifacts").as_uri())
    tracker = Tracker(_uri(home), spec_from_dict(SPEC))
    tracker.start((home / "artifacts").as_uri())
    tracker.finish_study()
    return tracker.parent_id


def test_adoption_is_one_rewrite_of_every_location(tmp_path):
    a = tmp_path / "a b"  # a space: URIs are percent-encoded
    parent = _small_home(a)
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    with _away(a):
        assert recorded_spec(_uri(b), "carry").name == "carry"  # reads the copy's spec.json, rewrites nothing
        assert adopt_home(_uri(b)) == [(a / "artifacts").as_uri()]
        assert all(loc.startswith((b / "artifacts").as_uri()) for loc in _locations(b))
        assert MlflowClient(_uri(b)).get_experiment("0").artifact_location == (b / "artifacts" / "0").as_uri()
        assert adopt_home(_uri(b)) == []  # once per move
        figures = tmp_path / "figures"
        figures.mkdir()
        (figures / "f.txt").write_text("x")
        log_export(_uri(b), parent, figures, "landscape/x")
        assert (b / "artifacts" / parent / "artifacts" / "landscape" / "x" / "f.txt").is_file()
        read_study(_uri(b), "carry")
        assert not a.exists()


def test_reading_a_copied_home_writes_nothing(tmp_path):
    """list, recommend, a resume's first read: the copy's own artifacts are read, its mlflow.db left as it is
    (byte for byte) until a command writes; the original's files are not read (moved away) nor touched."""
    from study.tracking import list_studies

    a, b = tmp_path / "a", tmp_path / "b"
    _small_home(a)
    shutil.copytree(a, b)
    db = (b / "mlflow.db").read_bytes()
    with _away(a):
        assert recorded_spec(_uri(b), "carry").name == "carry"
        assert "carry" in read_study(_uri(b), "carry")[1]  # spec.yaml, read from b/artifacts
        assert [r["name"] for r in list_studies(_uri(b))] == ["carry"]
        assert (b / "mlflow.db").read_bytes() == db
        assert not a.exists()
    assert all(loc.startswith((a / "artifacts").as_uri()) for loc in _locations(b))  # not adopted by reading


def test_copy_with_the_original_in_place_is_adopted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _small_home(a)
    shutil.copytree(a, b)
    assert adopt_home(_uri(b)) == [(a / "artifacts").as_uri()]  # b holds the copied run folders
    assert all(loc.startswith((b / "artifacts").as_uri()) for loc in _locations(b))
    assert all(loc.startswith((a / "artifacts").as_uri()) for loc in _locations(a))  # the original untouched


def test_artifacts_kept_in_another_home_are_left_alone(tmp_path):
    """`--tracking-uri sqlite:///D/mlflow.db --home H`: the runs' artifacts live in H/artifacts on purpose."""
    d, h = tmp_path / "d", tmp_path / "h"
    ensure_store(_uri(d), (h / "artifacts").as_uri())
    tracker = Tracker(_uri(d), spec_from_dict(SPEC))
    tracker.start((h / "artifacts").as_uri())
    (d / "artifacts").mkdir()  # a folder of the store's own, holding none of these runs
    before = _locations(d)
    assert adopt_home(_uri(d)) == []
    assert _locations(d) == before
    assert recorded_spec(_uri(d), "carry").name == "carry"


def test_a_storage_inside_a_copied_home_is_read_from_the_copy(tmp_path, capsys):
    """A study started with --storage pointing into its home: `study resume` from a copy of the home uses the copy's
    storage (the absolute path recorded would write into the original home's), and the recorded one otherwise."""
    from study.tracking import recorded_storage

    home = tmp_path / "home"
    storage = home / "custom" / "opt.db"
    ensure_store(_uri(home), (home / "artifacts").as_uri())
    tracker = Tracker(_uri(home), spec_from_dict(SPEC))
    tracker.start((home / "artifacts").as_uri(), storage=f"sqlite:///{storage}")
    tracker.finish_study()
    storage.parent.mkdir()
    storage.write_bytes(b"")
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    assert recorded_storage(_uri(home), "carry") == f"sqlite:///{storage}"  # where it was: as recorded
    assert recorded_storage(_uri(copy), "carry") == f"sqlite:///{copy / 'custom' / 'opt.db'}"
    assert "moved or copied" in capsys.readouterr().err
    (copy / "custom" / "opt.db").unlink()  # the copy lacks it: the recorded storage, as before
    assert recorded_storage(_uri(copy), "carry") == f"sqlite:///{storage}"


def test_adopt_home_writes_the_schema_it_was_written_for(tmp_path):
    """adopt_home rewrites MLflow's artifact-location columns itself (no API): a new store has the schema it was
    written for, with every column it rewrites. An MLflow whose schema moved fails here first, before a moved
    home is rewritten by guesswork."""
    import sqlite3

    from study.tracking import _ARTIFACT_COLUMNS, ADOPT_SCHEMA

    ensure_store(_uri(tmp_path), (tmp_path / "artifacts").as_uri())
    con = sqlite3.connect(tmp_path / "mlflow.db")
    try:
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(ADOPT_SCHEMA,)]
        for table, column, _ in _ARTIFACT_COLUMNS:
            assert column in {row[1] for row in con.execute(f"PRAGMA table_info({table})")}, (table, column)
    finally:
        con.close()
