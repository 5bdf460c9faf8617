"""MLflow adapter: one experiment per study, a parent run per study, a child run per member.

Owns every MLflow call (nothing else in the package imports mlflow). Only the driver writes, through
one RecordWriter thread with batched calls, so SQLite is safe. A member's child run is found again
by its stable key (tag `member_key`), and a metric step that is already recorded is never logged
again: resume and Ray retries record each member once. The parent run holds the resolved spec as
data (`spec.json`), which is what `study resume` runs, and the data section as a dataset input.

What a researcher browses in MLflow: per-epoch metrics under grouped keys (`train/loss`, `test/error`,
`decay/weight_norm`, `schedule/lr`, … see EPOCH_KEYS; the engine's rows and everything read back keep
the internal names of spec.EPOCH_METRICS), each at the wall-clock time its epoch ended; `log10_lr` and
`log10_weight_decay` metrics for MLflow's linear-axis charts; params lr and weight_decay as the short
strings the run name shows ('%.4g', so `params.lr = '0.1282'` finds the member) with the exact values
in `lr_exact` and `weight_decay_exact`, which is what everything reading records back uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import requests
import yaml
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from . import __version__
from .environment import cpu_model, version_changes, version_tags
from .spec import (CHANNELS, CHANNELS_ARTIFACT, EPOCH_METRICS, LANDSCAPE_METRICS, MemberSpec, SpecError, StudySpec, decay_timescale, planned_members, shown,
                   spec_from_dict, steps_per_epoch)
from .environment import seconds
from .serial import SerialWriter
from .stores import (VIEW_TAG, StoreError, check_mlflow_file, check_tracking_uri, create_sqlite_atomically, masked, sqlite_path,
                     why_no_file)

PER_EPOCH = EPOCH_METRICS
# internal per-epoch name (spec.EPOCH_METRICS, the engine's rows) -> MLflow metric key: the run page shows
# one section per prefix, and no metric key equals a param key (the param lr vs the schedule's lr)
EPOCH_KEYS = {"train_loss": "train/loss", "test_loss": "test/loss", "test_error": "test/error",
              "weight_norm": "decay/weight_norm", "effective_lr": "decay/effective_lr",
              "angular_update": "decay/angular_update", "lr": "schedule/lr", "epoch_time": "time/epoch_s",
              "wall_time": "time/train_s", "diverged": "train/diverged",
              "angular_equilibrium": "decay/angular_update_equilibrium", "head_norm": "decay/output_weight_norm",
              "decay_spread": "decay/effective_decay_spread", "norm_sqrt_v_corr": "decay/norm_vs_sqrt_v_rank_corr"}
EPOCH_KEYS.update({k: f"epoch/{k}" for k in PER_EPOCH if k not in EPOCH_KEYS})  # a metric added later
# a row's key for the wall-clock time (unix seconds) its epoch ended; set by the trainer if it knows,
# else by RecordWriter.log_epochs on receipt. Never logged as a metric: it is the metrics' timestamp.
ENDED_AT = "ended_at"
# MLflow prints "🏃 View run NAME at: URL" and "🧪 View experiment at: URL" to stdout each time a run ends on a
# tracking server: two lines per member would bury the study's own output (`study ui` links every run instead)
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)  # "Running upgrade …" per migration
# "Creating initial MLflow database tables…", and a full traceback per failed attempt on a locked or lost SQLite
# store, which _retry already reports in one line (and the driver's StoreWatch names a lost store)
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
# per-epoch metrics reach MLflow in one batched call per member at most this many seconds late
TEMPORARILY_UNAVAILABLE_CODE = ErrorCode.Name(TEMPORARILY_UNAVAILABLE)


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def transient(e: BaseException) -> bool:
    """An error that waiting can cure, classified by type and code, never by message: a locked or busy
    database (MLflow turns SQLAlchemy's OperationalError into TEMPORARILY_UNAVAILABLE), a server that does
    not answer, drops the connection or answers 5xx. Anything else (a bad request, a missing run) is a bug
    or bad input and is raised at once."""
    for x in _chain(e):
        if isinstance(x, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                          TimeoutError)):
            return True
        if isinstance(x, RestException) and x.get_http_status_code() >= 500:
            return True
        if isinstance(x, MlflowException) and x.error_code == TEMPORARILY_UNAVAILABLE_CODE:
            return True
    return False


RETRY_PATIENCE_S = 15 * 60  # an outage of the tracking store during a run is waited out this long


_GIVE_UP = threading.Event()   # set by stop_retrying(): the store is lost to this process
_SAY = threading.Lock()        # a retry line is said before stop_retrying() returns, or never


def stop_retrying() -> None:
    """The tracking store is lost to this process (deleted, or the study taken over): every retry loop gives
    up at its next attempt, and none says "retrying" after this returns (the driver says why, once)."""
    with _SAY:
        _GIVE_UP.set()


def all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str, what: str = "reading runs") -> list:
    """Every run of the experiments matching the filter, page by page (MLflow returns at most 1,000 a call).
    Python's cyclic garbage collector is paused meanwhile: reading a run builds about 60 short-lived ORM objects,
    and the collections they triggered, each walking every object alive, took 2.2 of `study list`'s 5.3 s on a
    store of 2,000 members (bench/README.md); what they leave is collected when it resumes. Only the call is
    paused, never _retry's waits: an outage of minutes runs with the collector on."""
    import gc

    def search(*args, **kwargs):
        paused = gc.isenabled()
        gc.disable()
        try:
            return client.search_runs(*args, **kwargs)
        finally:
            if paused:
                gc.enable()

    runs, token = [], None
    while experiment_ids:
        page = _retry(what, search, experiment_ids, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def _retry(what: str, fn, *args, **kwargs):
    """Call fn; while the tracking store is unreachable or busy (see `transient`), wait and say so, retrying
    every few seconds for up to RETRY_PATIENCE_S. Other errors are raised at once."""
    deadline, delay, attempt = time.time() + RETRY_PATIENCE_S, 0.5, 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            attempt += 1
            if not transient(e) or time.time() + delay > deadline:
                raise
            if attempt > 1 or not _locked(e):  # a busy SQLite file clears in a moment: no need to say so once
                with _SAY:
                    if _GIVE_UP.is_set():
                        raise
                    print(f"[study] tracking store unreachable while {what} ({type(e).__name__}); "
                          f"retrying in {delay:g} s (attempt {attempt})", file=sys.stderr, flush=True)
            if _GIVE_UP.wait(delay):  # set (the store is lost): give up at once
                raise
            delay = min(delay * 2, 5.0)


def _locked(e: BaseException) -> bool:
    return any(isinstance(x, MlflowException) and x.error_code == TEMPORARILY_UNAVAILABLE_CODE for x in _chain(e))


def ensure_store(uri: str, artifact_root: str | None = None) -> None:
    """Check the tracking URI (scheme, path, server answering) and create a SQLite store whole, so a reader
    that opens it from the first second never meets half a schema."""
    check_tracking_uri(uri)
    path = sqlite_path(uri)
    if path is not None and path.exists():
        check_mlflow_file(path)   # never MLflow's schema written into someone else's database

    def build(tmp_uri: str) -> None:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(tmp_uri, artifact_root or "/tmp/unused").engine.dispose()

    create_sqlite_atomically(uri, build)
    adopt_home(uri)  # a moved or copied home: before anything here reads or writes an artifact


# where MLflow keeps artifact locations: (table, column, extra condition); the runs' own artifact_uri is what
# every client and the UI (`mlflow server`) read and write artifacts by. adopt_home writes these columns itself
# (MLflow has no API to move a run's artifact location): the one place this project writes MLflow's tables, for
# the schema ADOPT_SCHEMA (MLflow 3.17's alembic head); tests/test_portable.py fails when MLflow's schema moves
ADOPT_SCHEMA = "dc11669786a5"
_ARTIFACT_COLUMNS = (("experiments", "artifact_location", ""), ("runs", "artifact_uri", ""),
                     ("logged_models", "artifact_location", ""),
                     ("trace_tags", "value", " AND key = 'mlflow.artifactLocation'"))


def _file_path(uri: str) -> Path | None:
    """The local path of a file: URI, None for anything else."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    return Path(os.path.normpath(urllib.request.url2pathname(parsed.path)))


def _under(column: str) -> str:
    """SQL: `column` is the URI ? or lies under it (?s: the URI, its length + 1, the URI + '/')."""
    return f"({column} = ? OR substr({column}, 1, ?) = ?)"


def _foreign_roots(con: sqlite3.Connection, own: Path) -> list[str]:
    """The artifact roots (`file://…/artifacts` URIs) of this store's experiments that lie outside the store's
    own folder `own` and that the store has left behind: that folder is gone, or `own` holds a copy of it (the
    artifact folder of a run recorded under it is in `own`, at the same place). A root elsewhere that holds its
    own artifacts (`--tracking-uri` into one home's store with `--home` another) is not foreign."""
    roots: dict[str, Path] = {}
    for exp_id, loc in con.execute("SELECT experiment_id, artifact_location FROM experiments"):
        path = _file_path(loc or "")
        if path is None:
            continue
        if loc.endswith(f"/{exp_id}"):  # MLflow's default root + experiment id (the Default experiment)
            loc, path = loc[:-len(f"/{exp_id}")], path.parent
        if path.name == "artifacts" and path != own:
            roots.setdefault(loc, path)
    out = []
    for root, path in roots.items():
        try:
            if path.exists() and os.path.samefile(path, own):  # the same folder by another name (a symlink)
                continue
        except OSError:
            pass
        if not path.exists() or any((own / urllib.request.url2pathname(u[len(root) + 1:])).is_dir()
                                    for (u,) in con.execute(f"SELECT artifact_uri FROM runs WHERE {_under('artifact_uri')}",
                                                            (root, len(root) + 1, root + "/"))):
            out.append(root)
    return out


def adopt_home(uri: str) -> list[str]:
    """Make a moved or copied studies' home work on its own. MLflow records artifact locations as absolute
    URIs (`file:///old/home/artifacts/RUN/artifacts`), so a copy of a home would read and write the original's
    artifacts (and a moved one would recreate the old folder). For a SQLite store `D/mlflow.db` whose `D/artifacts`
    holds the copied artifacts, every location under the old root is rewritten to `D/artifacts` in one short
    transaction (MLflow has no API for it), before this process reads or writes anything. A store already
    adopted, a server store, or a root that is not a left-behind copy (see `_foreign_roots`) is left as it is,
    so this only writes once per move: a driver running on the store has adopted it at its start, and the UI
    reads each run's location afresh. Returns the old roots rewritten; StoreError if the store cannot be written."""
    db = sqlite_path(uri)
    if db is None or not db.is_file():
        return []
    own = Path(os.path.normpath(os.path.abspath(db.parent / "artifacts")))
    if not own.is_dir():
        return []
    own_uri = own.as_uri()
    try:  # mode=rw: never creates a file; the busy timeout waits out a writer's short transaction
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(db))}?mode=rw", uri=True, timeout=60,
                              isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(f"invalid store: cannot open {db} to adopt the moved home ({e})") from None
    try:
        if not _foreign_roots(con, own):  # the usual case: reads only, no lock taken
            return []
        con.execute("BEGIN IMMEDIATE")
        roots = _foreign_roots(con, own)  # again, under the write lock
        tables = {t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [f"{t}.{c}" for t, c, _ in _ARTIFACT_COLUMNS if t in tables
                   and c not in {row[1] for row in con.execute(f"PRAGMA table_info({t})")}]
        if missing:  # a schema this rewrite was not written for: nothing is guessed
            version = con.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
            raise sqlite3.Error(f"its MLflow schema {version[0] if version else '?'} lacks {', '.join(missing)} "
                                f"(written for {ADOPT_SCHEMA})")
        for root in roots:
            for table, column, where in _ARTIFACT_COLUMNS:
                if table in tables:
                    con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE {_under(column)}{where}",
                                (own_uri, len(root) + 1, root, len(root) + 1, root + "/"))
        con.execute("COMMIT")
    except sqlite3.Error as e:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise StoreError(f"invalid store: {db} points at the artifacts of another home and could not be "
                         f"rewritten to {own} ({e})") from None
    finally:
        con.close()
    if roots:  # this process's clients cache each run's artifact location: forget the old ones
        from mlflow.tracking._tracking_service import utils as _service_utils

        getattr(_service_utils, "_artifact_repos_cache", {}).clear()
    for root in roots:
        print(f"[study] this home was moved or copied: artifacts recorded under {_file_path(root)} are now read "
              f"and written in {own}", file=sys.stderr, flush=True)
    return roots


short = shown  # a learning rate or weight decay as params, run names and every output show it (spec.shown)


def member_name(member: MemberSpec) -> str:
    """A member run's name: arm, lr, λ and seed, the numbers as the params show them."""
    return f"{member.arm} lr={short(member.lr)} wd={short(member.weight_decay)} seed={member.seed}"


def setting_name(setting) -> str:
    """A seed-averaged setting's run name: a member's, the seed replaced by how many seeds the mean is over."""
    n, div = setting.averaged, setting.diverged
    return (f"{setting.arm} lr={short(setting.lr)} wd={short(setting.weight_decay)} mean of {n} seed{'s' * (n != 1)}"
            + (f" ({div} diverged)" if div else ""))


def log10_metrics(member: MemberSpec, ts: int) -> list[Metric]:
    """log10 of lr and weight_decay (where positive), for MLflow's charts, whose axes are linear."""
    return [Metric(f"log10_{k}", math.log10(v), ts, 0) for k, v in
            (("lr", member.lr), ("weight_decay", member.weight_decay)) if v > 0]


def _exact(params: dict, key: str) -> float:
    """The exact lr or weight_decay of a member run (records from before `*_exact`: the param itself)."""
    return float(params.get(f"{key}_exact", params[key]))


def _param_str(k: str, v) -> str:
    if k in ("lr", "weight_decay", "lr_x_weight_decay"):
        return short(v)
    if k in ("decay_timescale_steps", "decay_timescale_epochs"):
        return f"{float(v):.6g}"
    return str(v)


def data_dataset(spec: StudySpec):
    """The spec's data section as an MLflow dataset (metadata only: the images are never loaded here):
    named after the dataset, its source the data path (or the code that makes it), its digest a hash of
    the resolved data fields, so two studies on the same data show the same digest."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    fields = spec.to_dict()["data"]
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
    source = None
    if spec.data.path:
        import warnings

        with warnings.catch_warnings():  # "can be interpreted in multiple ways": any local source will do
            warnings.simplefilter("ignore")
            try:
                source = resolve_dataset_source(Path(spec.data.path).expanduser().resolve().as_uri())
            except Exception:
                source = None
    if source is None:
        source = CodeDatasetSource({"dataset": spec.data.dataset, "loader": "study.datasets",
                                    **({"path": str(spec.data.path)} if spec.data.path else {})})
    return MetaDataset(source, name=spec.data.dataset, digest=digest)


def member_params(spec: StudySpec, member: MemberSpec, train_size: int) -> dict:
    """Everything needed to place a member on the landscape, including the decay timescale τ."""
    spe = steps_per_epoch(spec.train.batch_size, train_size)
    tau = decay_timescale(member.decay, member.lr, member.weight_decay, member.optimizer)
    params = {"optimizer": member.optimizer, "decay": member.decay, "lr": member.lr,
              "weight_decay": member.weight_decay, "lr_exact": repr(float(member.lr)),
              "weight_decay_exact": repr(float(member.weight_decay)), "seed": member.seed, "model": spec.model.name,
              "width": spec.model.width, "data": spec.data.dataset, "train_size": train_size,
              "epochs": spec.train.epochs, "batch_size": spec.train.batch_size, "schedule": spec.train.schedule,
              "warmup_epochs": spec.train.warmup_epochs, "steps_per_epoch": spe,
              "lr_x_weight_decay": member.lr * member.weight_decay,
              "decay_timescale_steps": tau, "decay_timescale_epochs": tau / spe,
              "total_steps": spe * spec.train.epochs}
    params.update(member.optimizer_kwargs())
    return params


# MLflow's UI opens a runs page on a "shared view" when its address carries `viewStateShareKey=KEY`: the view (filter,
# order, columns, charts) is the JSON of the experiment tag `mlflow.sharedViewState.KEY`, the tag its Share button
# writes. MLflow 3.17 has no API to set a page's columns, so the study writes these tags itself: views that open on
# the question instead of the default table (a collapsed parent, no lr or weight decay column). Keys are ours.


def _col(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # how the UI names a column: params.`lr`, metrics.`final_test_loss`


def question_views(spec: StudySpec) -> dict[str, dict]:
    """The views a study's experiment offers (VIEW_TAG): `study-members`, every member with lr, weight decay, seed
    and final metric, best first; `study-settings`, the seed-averaged settings the same way (the study's ranking);
    and per arm `study-landscape-ARM`, its settings as a contour of log10 λ × log10 η → the metric (with
    compareRunsMode=CHART). The metric is the study's search metric."""
    m = f"final_{spec.search.metric}"
    name = _col("attributes", "Run Name")
    base = {"orderByKey": _col("metrics", m), "orderByAsc": True, "startTime": "ALL", "lifecycleFilter": "Active",
            "datasetsFilter": [], "modelVersionFilter": "All Runs", "runsHiddenMode": "SHOW_ALL",
            "runListHidden": False, "viewMaximized": False}

    def table(search: str, columns: list[str]) -> dict:
        # the UI applies widths only to the columns of columnOrder, in that order: the name first, in full
        # ("sgd-independent lr=0.05477 wd=0.001778 seed=1"), then the question's columns
        return {**base, "searchFilter": search, "selectedColumns": columns, "columnOrder": [name, *columns],
                "columnWidths": {name: 360}}

    views = {
        "study-members": table("tags.role = 'member'", [
            _col("metrics", m), _col("params", "lr"), _col("params", "weight_decay"), _col("params", "seed"),
            _col("tags", "arm"), _col("tags", "diverged")]),
        "study-settings": table("tags.role = 'setting'", [
            _col("metrics", m), _col("metrics", f"{m}_std"), _col("metrics", "seeds_diverged"),
            _col("params", "lr"), _col("params", "weight_decay"), _col("params", "seeds"), _col("tags", "arm")]),
    }
    for arm in spec.arms:
        section = f"study-{arm.name}"
        chart = {"uuid": f"{section}-contour", "type": "CONTOUR", "runsCountToCompare": 10000,
                 "metricSectionId": section, "deleted": False, "isGenerated": False,
                 "displayName": f"{arm.name}: {m} (mean over seeds) by log10 weight decay × log10 lr",
                 "xaxis": {"key": "log10_weight_decay", "type": "METRIC"},
                 "yaxis": {"key": "log10_lr", "type": "METRIC"}, "zaxis": {"key": m, "type": "METRIC"}}
        scatter = {"uuid": f"{section}-scatter", "type": "SCATTER", "runsCountToCompare": 10000,
                   "metricSectionId": section, "deleted": False, "isGenerated": False,
                   "displayName": f"{arm.name}: {m} (mean over seeds) by log10 weight decay",
                   "xaxis": {"key": "log10_weight_decay", "type": "METRIC"}, "yaxis": {"key": m, "type": "METRIC"}}
        views[f"study-landscape-{arm.name}"] = {
            **views["study-settings"], "searchFilter": f"tags.role = 'setting' and tags.arm = '{arm.name}'",
            "compareRunCharts": [chart, scatter], "isAccordionReordered": True,
            "compareRunSections": [{"uuid": section, "name": f"{arm.name}: the landscape", "display": True,
                                    "isReordered": True, "deleted": False, "isGenerated": False}]}
    return views


class Tracker:
    """The study's MLflow records. Constructing one only looks (and refuses a name that already has records
    unless `resume`); `start()` writes: the experiment, the parent run with the resolved spec."""

    def __init__(self, uri: str, spec: StudySpec, resume: bool = False):
        self.uri, self.spec, self.resume = uri, spec, resume
        self.client = MlflowClient(uri)
        exp = _retry("finding the experiment", self.client.get_experiment_by_name, spec.experiment)
        self.experiment_id = exp.experiment_id if exp else None
        parents = self._search(f"tags.study = '{spec.name}' and tags.role = 'parent'") if exp else []
        if exp and not (resume and parents):   # one experiment, one study (a study an older version recorded
            self._check_own_experiment(exp)     # beside another's still resumes where it is)
        if not resume:   # in any experiment of the store: another tracking.experiment must not start a twin
            anywhere = parents or self._search_all(f"tags.study = '{spec.name}' and tags.role = 'parent'")
            if anywhere:
                where = self.client.get_experiment(anywhere[0].info.experiment_id).name
                raise FileExistsError(f"invalid name: study {spec.name!r} already has records in {uri} (experiment "
                                      f"{where!r}); finish it with `study resume {spec.name}` or choose another name")
        if resume and not parents:
            raise LookupError(f"invalid name: no study {spec.name!r} is recorded in {uri}")
        self.parent_id = parents[0].info.run_id if parents else None
        self.version_changes: list[str] = []    # on resume: versions other than those the study started with
        self.device_recorded = False            # on resume: whether the parent run already names its device
        self.logged_steps: dict[str, int] = {}  # run id -> last epoch recorded
        self.last_ts: dict[str, int] = {}       # run id -> timestamp (ms) of the last epoch recorded here
        self.flat_keys: set[str] = set()        # runs recorded before EPOCH_KEYS: written on as they began

    def _check_own_experiment(self, exp) -> None:
        """The experiment is this study's: tagged so at its creation (or, recorded before that tag, holding this
        study's runs only), and never MLflow's catch-all Default. FileExistsError naming the holder otherwise."""
        name = self.spec.name
        owner = exp.tags.get("study")
        if owner is None and exp.name != "Default":  # made before the tag: whose runs does it hold?
            other = _retry("reading the experiment", self.client.search_runs, [exp.experiment_id],
                           f"tags.study != '{name}'", max_results=1)
            owner = other[0].data.tags["study"] if other else name
        if owner != name:
            whose = f"study {owner!r}'s records" if owner else "runs no study made"
            raise FileExistsError(f"invalid tracking.experiment: the experiment {exp.name!r} in {self.uri} holds "
                                  f"{whose}; each study records into an experiment of its own: choose another "
                                  f"tracking.experiment, but got experiment={exp.name!r}")

    def epoch_key(self, run_id: str, name: str) -> str:
        """The MLflow key of per-epoch metric `name` in this run."""
        return name if run_id in self.flat_keys else EPOCH_KEYS[name]

    def set_planned(self, members: int, refine_rounds: int | None = None) -> None:
        """How many members the study plans (it grows when search.refine adds columns): export's completeness."""
        tags = [RunTag("members_planned", str(members))]
        if refine_rounds is not None:
            tags.append(RunTag("refine_rounds", str(refine_rounds)))
        _retry("tagging the parent run", self.client.log_batch, self.parent_id, tags=tags)

    def tag_parent(self, tags: dict[str, str]) -> None:
        _retry("tagging the parent run", self.client.log_batch, self.parent_id,
               tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def refine_rounds(self) -> int:
        if self.parent_id is None:
            return 0
        return int(_retry("reading the parent run", self.client.get_run, self.parent_id).data.tags.get("refine_rounds", 0))

    def start(self, artifact_location: str | None = None, storage: str | None = None) -> None:
        """Open the study's records (the experiment and the parent run; reopened on resume). `storage`: an Optuna
        storage other than the home's default, recorded (password masked) so that `study resume` finds it."""
        spec = self.spec
        if self.experiment_id is None:
            self.experiment_id = _retry(
                "creating the experiment", self.client.create_experiment, spec.experiment,
                artifact_location=artifact_location,
                tags={"study": spec.name, "mlflow.note.content": spec.description or f"study {spec.name}"})
        for key, view in question_views(spec).items():  # written again on resume: older studies get them too
            _retry("writing the experiment's views", self.client.set_experiment_tag, self.experiment_id,
                   VIEW_TAG + key, json.dumps(view, separators=(",", ":")))
        if self.parent_id is not None:
            _retry("reopening the parent run", self.client.update_run, self.parent_id, "RUNNING")
            recorded = _retry("reading the parent run", self.client.get_run, self.parent_id).data.tags
            self.version_changes = version_changes(recorded)
            self.device_recorded = "env.device" in recorded   # the device the study started on stays recorded
            return
        commit = git_commit()
        run = _retry("creating the parent run", self.client.create_run, self.experiment_id,
                     run_name=spec.name, tags={"study": spec.name, "role": "parent", "git_commit": commit,
                                               "mlflow.source.git.commit": commit, "package_version": __version__,
                                               "mlflow.source.name": "study run", **version_tags(),
                                               "spec_identity": spec.identity(),
                                               "env.driver_cpu": cpu_model(),
                                               **({"optuna_storage": masked(storage)} if storage else {}),
                                               **_in_home(storage, self.uri),
                                               "mlflow.note.content": spec.description or f"study {spec.name}"})
        self.parent_id = run.info.run_id
        resolved = spec.to_dict()  # after --data-path and --smoke: exactly what runs, and what resume runs
        _retry("logging the spec", self.client.log_text, self.parent_id, json.dumps(resolved, indent=1), "spec.json")
        _retry("logging the dataset", self.client.log_inputs, self.parent_id, datasets=[DatasetInput(
            data_dataset(spec)._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])])
        _retry("logging the spec", self.client.log_text, self.parent_id,
               "# the resolved spec of this study (spec.json holds the same; `study resume` reads it)\n"
               + yaml.safe_dump(applicable(resolved, spec), sort_keys=False, allow_unicode=True), "spec.yaml")
        _retry("logging study params", self.client.log_batch, self.parent_id, params=[
            Param("study", spec.name), Param("sampler", spec.search.sampler), Param("model", spec.model.name),
            Param("data", spec.data.dataset), Param("epochs", str(spec.train.epochs)),
            Param("arms", ",".join(a.name for a in spec.arms) or "members"),
            Param("seeds", ",".join(map(str, spec.search.seeds))), Param("metric", spec.search.metric)])

    def _search_all(self, filter_string: str) -> list:
        exps = [e.experiment_id for e in _retry("listing experiments", self.client.search_experiments)]
        return _retry("searching runs", self.client.search_runs, exps, filter_string, max_results=10) if exps else []

    def _search(self, filter_string: str):
        if self.experiment_id is None:
            return []
        return all_runs(self.client, [self.experiment_id], filter_string, "searching runs")

    def member_runs(self) -> dict[str, object]:
        """Existing child runs by member key."""
        return {r.data.tags["member_key"]: r for r in self._search(f"tags.study = '{self.spec.name}' and tags.role = 'member'")}

    def open_member(self, member: MemberSpec, arm_trial: int, train_size: int, existing=None) -> str:
        """The member's child run: found by key (and its recorded epochs remembered) or created with its params."""
        key = member.key(self.spec.name)
        if existing is None:
            existing = self._search(f"tags.member_key = '{key}'")
            existing = existing[0] if existing else None
        if existing is not None:
            run_id = existing.info.run_id
            recorded = existing.data.metrics
            if "train_loss" in recorded and EPOCH_KEYS["train_loss"] not in recorded:
                self.flat_keys.add(run_id)  # begun by an older version: its epochs stay under one key each
            hist = _retry("reading metric history", self.client.get_metric_history, run_id,
                          self.epoch_key(run_id, "train_loss"))
            self.logged_steps[run_id] = max((m.step for m in hist), default=0)
            self.last_ts[run_id] = max((m.timestamp for m in hist), default=0)
            if "optimizer" not in existing.data.params:  # its driver died before logging them: complete it
                _retry("logging member params", self.client.log_batch, run_id,
                       params=self._member_params(member, train_size))
            if "log10_lr" not in recorded:  # recorded before these existed
                _retry("logging member metrics", self.client.log_batch, run_id,
                       metrics=log10_metrics(member, int(time.time() * 1000)))
            _retry("reopening a member run", self.client.update_run, run_id, "RUNNING")
            return run_id
        run = _retry("creating a member run", self.client.create_run, self.experiment_id, run_name=member_name(member),
                     tags={"mlflow.parentRunId": self.parent_id, "study": self.spec.name, "role": "member",
                           "member_key": key, "arm": member.arm, "seed": str(member.seed),
                           "optuna_trial": f"{self.spec.name}.{member.arm}#{arm_trial}"})
        _retry("logging member params", self.client.log_batch, run.info.run_id,
               params=self._member_params(member, train_size), metrics=log10_metrics(member, int(time.time() * 1000)))
        self.logged_steps[run.info.run_id] = 0
        return run.info.run_id

    def _member_params(self, member: MemberSpec, train_size: int) -> list[Param]:
        return [Param(k, _param_str(k, v)) for k, v in member_params(self.spec, member, train_size).items()]

    def log_epochs(self, run_id: str, rows: list[dict], tags: dict | None = None) -> int:
        """Log epochs' metrics with step = epoch in batched calls, skipping epochs already recorded, each
        epoch at the time it ended (its row's ENDED_AT, else now), strictly later than the epoch before.
        Returns how many epochs were new."""
        rows = sorted((r for r in rows if int(r["epoch"]) > self.logged_steps.get(run_id, 0)), key=lambda r: r["epoch"])
        if not rows:  # a retried trial re-reporting recorded epochs: only its tags (node, resume) are news
            if tags:
                _retry("tagging a run", self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            return 0
        now, last, metrics = time.time(), self.last_ts.get(run_id, 0), []
        for r in rows:
            last = ts = max(int(float(r.get(ENDED_AT) or now) * 1000), last + 1)
            metrics.extend(Metric(self.epoch_key(run_id, k), float(r[k]), ts, int(r["epoch"]))
                           for k in PER_EPOCH if k in r)
        tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for r in rows:  # the last epoch of a member whose optimizer divides by √v̂: its per-channel diagnostics.
            if r.get(CHANNELS):  # Before its metrics: an epoch whose metrics are in has its artifact too (a retry
                # after a crash in between writes the same file again)
                _retry("logging the channel diagnostics", self.client.log_dict, run_id, r[CHANNELS], CHANNELS_ARTIFACT)
        for i in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics per call
            _retry("logging metrics", self.client.log_batch, run_id, metrics=metrics[i:i + 900],
                   tags=tag_list if i == 0 else [])
        self.logged_steps[run_id], self.last_ts[run_id] = int(rows[-1]["epoch"]), last
        return len(rows)

    def metric_history(self, run_id: str) -> list[dict]:
        """Per-epoch rows of a member under the internal names, read back from MLflow (the records are the
        source of truth); a run recorded with the older flat keys reads the same."""
        by_step: dict[int, dict] = {}
        flat = {k: k for k in PER_EPOCH}
        for mapping in (flat,) if run_id in self.flat_keys else (EPOCH_KEYS, flat):  # flat: only if none are grouped
            for name in PER_EPOCH:
                for m in _retry("reading metric history", self.client.get_metric_history, run_id, mapping[name]):
                    by_step.setdefault(m.step, {"epoch": m.step})[name] = m.value
            if by_step:
                break
        return [by_step[s] for s in sorted(by_step)]

    def recorded_members(self) -> list:
        """Every member run, finished (with its final metric) or not (value None): what a lost Optuna storage is
        rebuilt from. The unfinished ones matter too: they hold the columns a refine round added."""
        from .search import Finished  # the type the search takes; search.py imports no MLflow

        out, metric = [], f"final_{self.spec.search.metric}"
        for r in self._search(f"tags.study = '{self.spec.name}' and tags.role = 'member'"):
            done = r.info.status == "FINISHED" and metric in r.data.metrics
            p = r.data.params
            if not {"optimizer", "decay", "lr", "weight_decay", "seed"} <= set(p):
                continue  # a driver died between creating the run and logging its params: nothing of it counts
            member = MemberSpec.from_dict({"optimizer": p["optimizer"], "decay": p["decay"], "lr": _exact(p, "lr"),
                                           "weight_decay": _exact(p, "weight_decay"), "seed": int(p["seed"])})
            final = {k[6:]: v for k, v in r.data.metrics.items() if k.startswith("final_")} if done else {}
            out.append(Finished(member, r.data.metrics[metric] if done else None,
                                r.data.tags.get("diverged") == "true", r.info.run_id, final))
        return out

    def finish_member(self, run_id: str, final: dict | None) -> None:
        if _retry("reading a member run", self.client.get_run, run_id).info.status == "FINISHED":
            return  # recorded already (an interrupted driver's cleanup after the fact): never twice, never undone
        if final is None:
            _retry("closing a failed member run", self.client.set_terminated, run_id, "FAILED")
            return
        ts = int(time.time() * 1000)
        metrics = [Metric(f"final_{k}", float(v), ts, 0) for k, v in final.items()
                   if k in PER_EPOCH or k == "diverged_epoch"]
        _retry("logging final metrics", self.client.log_batch, run_id, metrics=metrics,
               tags=[RunTag("diverged", "true" if final.get("diverged") else "false")])
        _retry("closing a member run", self.client.set_terminated, run_id, "FINISHED")

    def setting_runs(self) -> dict[str, tuple[str, bool]]:
        """The seed-averaged settings' runs (study/settings.py): setting key -> (run id, whether it is finished: a
        driver that died while recording one leaves it unfinished, and record_setting completes it)."""
        return {r.data.tags["setting_key"]: (r.info.run_id, r.info.status == "FINISHED")
                for r in self._search(f"tags.study = '{self.spec.name}' and tags.role = 'setting'")}

    def record_setting(self, setting, train_size: int, unfinished: str | None = None) -> str:
        """A setting whose seeds have all finished, as a finished child run of the parent: role `setting` (member
        counts and the landscape read `member` runs only), the params a member has but `seeds` for `seed`, and
        `final_METRIC` the seed mean the landscape's cell holds (with `final_METRIC_std`, `seeds_finished`,
        `seeds_diverged`), so that sorting MLflow's table by it ranks what the study ranks. `unfinished`: the run a
        driver began for it and did not finish, written whole now instead of a second one. Returns the run id."""
        key = setting.key(self.spec.name)
        seeds = sorted(setting.seeds)
        members = ",".join(setting.seeds[s].run_id or "" for s in seeds)
        if unfinished is not None:  # its tags are there (created with the run); params and metrics may be
            _retry("naming a setting run", self.client.update_run, unfinished, name=setting_name(setting))
            self._complete_setting(unfinished, setting, train_size, seeds)
            return unfinished
        run = _retry("creating a setting run", self.client.create_run, self.experiment_id,
                     run_name=setting_name(setting),
                     tags={"mlflow.parentRunId": self.parent_id, "study": self.spec.name, "role": "setting",
                           "setting_key": key, "arm": setting.arm, "seeds": ",".join(map(str, seeds)),
                           "member_runs": members[:5000],
                           "mlflow.note.content": f"The mean over seeds {', '.join(map(str, seeds))} of the member "
                                                  f"runs {members.replace(',', ', ')} (diverged seeds left out, as "
                                                  f"the landscape does)."})
        self._complete_setting(run.info.run_id, setting, train_size, seeds)
        return run.info.run_id

    def _complete_setting(self, run_id: str, setting, train_size: int, seeds: list[int]) -> None:
        params = member_params(self.spec, setting.member(), train_size)
        params.pop("seed")
        params["seeds"] = ",".join(map(str, seeds))
        logged = _retry("reading a setting run", self.client.get_run, run_id).data.params
        ts = int(time.time() * 1000)
        _retry("logging a setting", self.client.log_batch, run_id,  # params once: MLflow refuses changing one
               params=[Param(k, _param_str(k, v)) for k, v in params.items() if k not in logged],
               metrics=[Metric(k, v, ts, 0) for k, v in setting.metrics().items()]
               + log10_metrics(setting.member(), ts))
        _retry("closing a setting run", self.client.set_terminated, run_id, "FINISHED")

    def finish_study(self, status: str = "FINISHED", summary: dict | None = None) -> None:
        if summary:
            ts = int(time.time() * 1000)
            _retry("logging the summary", self.client.log_batch, self.parent_id,
                   metrics=[Metric(k, float(v), ts, 0) for k, v in summary.items()])
        _retry("closing the parent run", self.client.set_terminated, self.parent_id, status)


class RecordWriter(SerialWriter):
    """The driver's one MLflow writer (a SerialWriter: Ray Tune's event loop never waits for the store). Epoch
    rows are gathered per member and written as one batched call per member every STUDY_LOG_INTERVAL_S seconds
    (default 10) and on flush(); a writer that falls behind writes more epochs per call, not more calls. A
    member's tags (node, trial, environment) are sent again only when they change."""

    def __init__(self, tracker: Tracker, train_size: int):
        self.tracker, self.train_size = tracker, train_size
        self.existing = tracker.member_runs()
        self.run_ids: dict[str, str] = {}                  # member key -> MLflow run id
        self.reported: dict[str, dict[int, dict]] = {}     # member key -> epoch -> row reported to this driver
        self.epochs_written = 0                            # member-epochs newly recorded by this driver
        self._rows: dict[str, tuple[dict[int, dict], dict]] = {}  # key -> (epoch -> row, tags); writer thread only
        self._tags_sent: dict[str, dict] = {}                     # key -> tags recorded; writer thread only
        self._rows_written = 0.0
        self._interval = seconds("STUDY_LOG_INTERVAL_S")
        super().__init__("mlflow-writer")

    # ------------------------------------------------------------------ called by the driver (any thread)

    def open_member(self, key: str, member: MemberSpec, trial_number: int) -> None:
        self.call(self._open, key, member, trial_number)

    def log_epochs(self, rows: list[tuple[str, dict]], tags: dict) -> None:
        """One epoch row per member (an array's epoch): one queued call, whatever the array's size."""
        now = time.time()
        for key, row in rows:
            self.reported.setdefault(key, {})[int(row["epoch"])] = row  # a retry may report an epoch again
        # the epoch's end: the trainer's, else now (when the driver hears of it), not when the batch is written
        self.call(self._gather, [(key, row if row.get(ENDED_AT) else {**row, ENDED_AT: now}) for key, row in rows],
                  tags)

    def finish_member(self, key: str, final: dict | None) -> None:
        self.call(self.finish_now, key, final)

    def flush(self) -> None:
        """Wait until everything queued so far is recorded; a failed write stops the study here."""
        try:
            super().flush()
        except RuntimeError as e:
            raise RuntimeError(f"recording to MLflow failed: {e.__cause__!r}") from e.__cause__

    # ------------------------------------------------------------------ on the writer's thread

    def history(self, key: str, epochs: int) -> list[dict]:
        """The member's epochs: as reported to this driver, completed from MLflow for epochs an earlier
        driver recorded (resume). Call after flush(), or on the writer's thread after write_now()."""
        seen = self.reported.pop(key, {})
        if len(seen) < epochs:
            for row in self.tracker.metric_history(self.run_ids[key]):
                seen.setdefault(int(row["epoch"]), row)
        return [seen[e] for e in sorted(seen)]

    def finish_now(self, key: str, final: dict | None) -> None:
        self.tracker.finish_member(self.run_ids[key], final)

    def write_now(self) -> None:
        """Record every gathered row now."""
        self._write_rows(True)

    def on_idle(self) -> None:
        self._write_rows(False)

    def on_flush(self) -> None:
        self._write_rows(True)

    def _open(self, key: str, member: MemberSpec, number: int) -> None:
        self.run_ids[key] = self.tracker.open_member(member, number, self.train_size, self.existing.get(key))

    def _gather(self, rows: list[tuple[str, dict]], tags: dict) -> None:
        for key, row in rows:
            member_rows, all_tags = self._rows.setdefault(key, ({}, {}))
            member_rows[int(row["epoch"])] = row  # a retried trial may report an epoch again before it is written
            all_tags.update(tags)

    def _write_rows(self, force: bool) -> None:
        if not self._rows or (not force and time.time() - self._rows_written < self._interval):
            return
        rows, self._rows = self._rows, {}
        self._rows_written = time.time()
        for key, (member_rows, tags) in rows.items():
            sent = self._tags_sent.setdefault(key, {})
            news = {k: v for k, v in tags.items() if sent.get(k) != v}
            self.epochs_written += self.tracker.log_epochs(self.run_ids[key], list(member_rows.values()), news)
            sent.update(news)


def list_studies(tracking: str) -> list[dict]:
    """Every study recorded in an MLflow store (`study list`): its parent run and its members' run states, as
    rows {name, status, planned, done, failed, training, updated}. Reading never creates a store."""
    client = _reader(tracking)

    def search(flt: str) -> list:
        exps = [e.experiment_id for e in _retry("listing experiments", client.search_experiments)]
        return all_runs(client, exps, flt, "listing studies")

    members: dict[str, list] = {}
    for r in search("tags.role = 'member'"):
        members.setdefault(r.data.tags.get("study", ""), []).append(r)
    rows = []
    for parent in search("tags.role = 'parent'"):
        name = parent.data.tags.get("study", parent.info.run_name)
        mine = members.get(name, [])
        planned = parent.data.tags.get("members_planned")
        if planned is None:  # records from before the tag: the recorded spec says
            try:
                planned = planned_members(recorded_spec(tracking, name))
            except (LookupError, SpecError):
                planned = None
        times = [t for r in (parent, *mine) for t in (r.info.start_time, r.info.end_time) if t]
        rows.append({"name": name, "status": parent.info.status, "planned": None if planned is None else int(planned),
                     "done": sum(r.info.status == "FINISHED" for r in mine),
                     "failed": sum(r.info.status == "FAILED" for r in mine),
                     "training": sum(r.info.status == "RUNNING" for r in mine),
                     "environment": {k[4:]: v for k, v in parent.data.tags.items() if k.startswith("env.")},
                     "updated": max(times) / 1000 if times else None})
    return rows


def _reader(uri: str, adopt: bool = False) -> MlflowClient:
    """A client for reading records; a SQLite store that does not exist is not created by looking. A moved or
    copied home is adopted (its artifact locations rewritten, see adopt_home) only with `adopt`, by a command
    that is about to write artifacts anyway (export); a read alone writes nothing (see read_artifact)."""
    path = sqlite_path(uri)
    if path is None:
        check_tracking_uri(uri)   # a server or database that does not answer is one line, not minutes of retries
    if path is not None and not path.is_file():
        raise LookupError(f"invalid name: no studies are recorded in {uri} ({why_no_file(path)})")
    if path is not None and not check_mlflow_file(path):   # read-only: looking writes nothing
        raise LookupError(f"invalid name: no studies are recorded in {uri} (the file is empty)")
    if adopt:
        try:
            adopt_home(uri)  # a moved or copied home: export writes its figures into its own artifacts
        except StoreError as e:  # read-only or busy: reads still work (read_artifact)
            print(f"warning: {e}", file=sys.stderr)
    return MlflowClient(uri)


def read_artifact(uri: str, run, artifact_path: str) -> Path:
    """A local path of a run's artifact. In a moved or copied home not yet adopted, the run's recorded location
    lies under the old home: the copy under this home's `artifacts/` is read instead, without writing the store
    (adopt_home does that, once, when a command writes). MlflowException if the artifact is not there."""
    db = sqlite_path(uri)
    loc = run.info.artifact_uri or ""
    if db is not None and db.is_file() and (db.parent / "artifacts").is_dir():
        own = Path(os.path.normpath(os.path.abspath(db.parent / "artifacts")))
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(db))}?mode=ro", uri=True, timeout=60)
        try:
            roots = _foreign_roots(con, own)
        finally:
            con.close()
        for root in roots:
            if loc == root or loc.startswith(root + "/"):
                path = own / urllib.request.url2pathname(loc[len(root) + 1:]) / artifact_path
                if not path.exists():
                    raise MlflowException(f"no artifact {artifact_path} in {path.parent}")
                return path
    return Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=artifact_path,
                                                    tracking_uri=uri))


def applicable(resolved: dict, spec: StudySpec) -> dict:
    """The resolved spec without the fields it does not use (spec.not_applicable): a file `study run` takes again."""
    from .spec import not_applicable

    out = json.loads(json.dumps(resolved))
    for where in not_applicable(spec):
        section, name = where.split(".")
        if isinstance(out.get(section), dict):
            out[section].pop(name, None)
    return out


def member_details(uri: str, run_ids: list[str], histories=("angular_update", "angular_equilibrium"),
                   channels: bool = False) -> list[dict]:
    """Per member run: {"final": its final_* metrics without the prefix, "tags": its tags, "history": {name:
    {epoch: value}} of the per-epoch `histories` (EPOCH_KEYS names; a run recorded before them, under the flat
    name), "channels": with `channels`, its CHANNELS_ARTIFACT (None where it has none)} — what the report's claims
    section reads (study/claims.py)."""
    client = _reader(uri)
    out = []
    for rid in run_ids:
        run = _retry("reading a member run", client.get_run, rid)
        history = {}
        for name in histories:
            hist = _retry("reading a metric history", client.get_metric_history, rid, EPOCH_KEYS[name]) \
                or _retry("reading a metric history", client.get_metric_history, rid, name)
            history[name] = {m.step: m.value for m in hist}
        per_channel = None
        if channels and run.data.tags.get("diverged") != "true":
            try:
                per_channel = json.loads(read_artifact(uri, run, CHANNELS_ARTIFACT).read_text())
            except MlflowException:  # recorded before the per-channel diagnostics, or without a preconditioner
                pass
        out.append({"final": {k[6:]: v for k, v in run.data.metrics.items() if k.startswith("final_")},
                    "tags": dict(run.data.tags), "history": history, "channels": per_channel})
    return out


def find_parent(uri: str, name: str):
    """The parent run of study `name`, or LookupError naming the store."""
    client = _reader(uri)
    exps = [e.experiment_id for e in _retry("listing experiments", client.search_experiments)]
    runs = _retry("finding the study", client.search_runs, exps,
                  f"tags.study = '{name}' and tags.role = 'parent'", max_results=1) if exps else []
    if not runs:
        raise LookupError(f"invalid name: no study {name!r} is recorded in {uri}")
    return runs[0]


def setting_run_ids(uri: str, name: str, experiment_id: str) -> dict[tuple, str]:
    """The seed-averaged setting runs of study `name` (study/settings.py): (arm, lr, weight_decay) -> run id."""
    return {(r.data.tags.get("arm"), _exact(r.data.params, "lr"), _exact(r.data.params, "weight_decay")): r.info.run_id
            for r in all_runs(_reader(uri), [experiment_id], f"tags.study = '{name}' and tags.role = 'setting'")
            if "lr" in r.data.params}  # a run begun and not finished has no params yet


def recorded_spec(uri: str, name: str) -> StudySpec:
    """The resolved spec a study was started with (spec.json on its parent run): what resume runs."""
    parent = find_parent(uri, name)
    try:
        path = read_artifact(uri, parent, "spec.json")
    except MlflowException:
        raise LookupError(f"invalid name: study {name!r} in {uri} has no spec.json on its parent run "
                          f"(recorded by an older version); start it again under a new name") from None
    return spec_from_dict(json.loads(Path(path).read_text()))


def _storage_file(url: str) -> Path | None:
    """The file of a SQLite URL or an Optuna journal path; None for a server."""
    return sqlite_path(url) if "://" in url else Path(url).expanduser()


def _in_home(storage: str | None, uri: str) -> dict[str, str]:
    """{"optuna_storage_in_home": path relative to the home} for a storage file inside the home of a SQLite
    tracking store (where a copy of the home has its own copy of it), else nothing."""
    home, path = sqlite_path(uri), _storage_file(storage) if storage else None
    if home is None or path is None:
        return {}
    try:
        return {"optuna_storage_in_home": path.resolve().relative_to(home.parent.resolve()).as_posix()}
    except ValueError:
        return {}


def recorded_storage(uri: str, name: str, given: str | None = None) -> str | None:
    """The Optuna storage a study was started with, if it was not the home's default (None), as recorded
    (a password masked); LookupError if its URL held a password and `given` (--storage) does not say it again.
    A storage file that lay inside the home is read from this home's copy of it, when the home was moved or
    copied (the absolute path recorded would write into the original home)."""
    tags = find_parent(uri, name).data.tags
    url, rel = tags.get("optuna_storage"), tags.get("optuna_storage_in_home")
    if url and "***@" in url and given is None:
        raise LookupError(f"invalid --storage: study {name!r} was started with the Optuna storage {url}; "
                          f"pass it again with its password: study resume {name} --storage URL")
    home = sqlite_path(uri)
    if url and rel and home is not None:
        here = (home.parent / rel).resolve()
        if here != _storage_file(url).resolve() and here.is_file():
            moved = f"sqlite:///{here}" if "://" in url else str(here)
            print(f"[study] this home was moved or copied: study {name!r}'s Optuna storage is read from its copy "
                  f"{moved} (recorded: {url})", file=sys.stderr, flush=True)
            return moved
    return url


def parent_environment(uri: str, parent_run_id: str) -> dict[str, str]:
    """The env.* tags of a study's parent run (versions, device), without the prefix."""
    tags = _retry("reading the parent run", _reader(uri).get_run, parent_run_id).data.tags
    return {k[4:]: v for k, v in sorted(tags.items()) if k.startswith("env.")}


def environment_line(env: dict[str, str]) -> str:
    """'torch 2.14.1, numpy 2.4.6, … on AMD EPYC (cpu, AVX2)': one line for the report and `study list`."""
    if not env:
        return "not recorded"
    names = ("python", "torch", "numpy", "scipy", "scikit-learn", "ray", "optuna", "mlflow")
    versions = ", ".join(f"{n} {env[n]}" for n in names if n in env)
    where = env.get("gpu") or env.get("cpu") or env.get("driver_cpu", "?")
    detail = ", ".join(v for v in (env.get("device"), env.get("cpu_capability"),
                                   f"CUDA {env['cuda']}, cuDNN {env['cudnn']}" if "cuda" in env else None) if v)
    return f"{versions} on {where}" + (f" ({detail})" if detail else "")


def read_study(uri: str, name: str, metric: str | None = None, quiet: bool = False) -> tuple[str, str, str, list[dict]]:
    """(parent run id, spec text, metric, members) of a recorded study; members carry `error` = final
    `metric` (default: the study's search metric). `quiet`: no warning that the study is not complete."""
    client = _reader(uri)
    exps = [e.experiment_id for e in _retry("listing experiments", client.search_experiments)]
    runs = all_runs(client, exps, f"tags.study = '{name}' and tags.role != 'setting'")  # the settings: not read
    parents = [r for r in runs if r.data.tags.get("role") == "parent"]
    if not parents:
        raise LookupError(f"invalid name: no study {name!r} is recorded in {uri}")
    parent = parents[0].info.run_id
    if metric is not None and metric not in LANDSCAPE_METRICS:   # the schedule's lr or the diverged flag is no landscape
        raise LookupError(f"invalid --metric: {metric!r} is not a landscape metric; a landscape maps one of "
                          f"{', '.join(LANDSCAPE_METRICS)}")
    metric = metric or parents[0].data.params.get("metric", "test_error")
    spec_text = ""
    try:
        spec_text = read_artifact(uri, parents[0], "spec.yaml").read_text()
    except Exception:  # a study without its spec artifact still exports
        pass
    members = []
    for r in runs:
        if r.data.tags.get("role") != "member" or r.info.status != "FINISHED":
            continue
        p, m = r.data.params, r.data.metrics
        if f"final_{metric}" not in m:
            raise LookupError(f"invalid --metric: member runs have no final_{metric}; "
                              f"known: {', '.join(k[6:] for k in m if k.startswith('final_'))}")
        members.append({"optimizer": p["optimizer"], "decay": p["decay"], "lr": _exact(p, "lr"),
                        "weight_decay": _exact(p, "weight_decay"), "seed": int(p["seed"]),
                        "error": m[f"final_{metric}"], "diverged": r.data.tags.get("diverged") == "true",
                        "run_id": r.info.run_id,
                        "total_steps": int(float(p["total_steps"])) if "total_steps" in p else None})
    planned = parents[0].data.tags.get("members_planned")
    if planned is not None and len(members) < int(planned) and not quiet:
        print(f"warning: study {name!r} is not complete: {len(members)} of {planned} members finished; "
              f"the landscape shows those only", file=sys.stderr)
    return parent, spec_text, metric, members


def is_complete(uri: str, name: str, finished: int) -> bool:
    """Whether `finished` members are all the study planned (records from before `members_planned`: yes)."""
    planned = find_parent(uri, name).data.tags.get("members_planned")
    return planned is None or finished >= int(planned)


ANSWER_HEADING = "## Answer: final "  # a section of the parent run's description per metric, rewritten by each export
NOTE_LIMIT = 8000                     # MLflow's longest tag value


def note_with_answer(note: str, metric: str, lines: list[str], report: str) -> str:
    """The parent run's description (MLflow's note) with its answer for `metric`: the verdict lines and where the
    report is, replacing that metric's earlier answer and keeping the user's description and other metrics'."""
    head, *sections = note.split("\n\n" + ANSWER_HEADING)
    kept = [ANSWER_HEADING + sec for sec in sections if not sec.startswith(f"{metric}\n")]
    answer = (f"{ANSWER_HEADING}{metric}\n" + "".join(f"- {line}\n" for line in lines)
              + f"\nFigures and the report: this run's artifacts, `{report}`.")
    while kept and len("".join("\n\n" + sec for sec in [*kept, answer])) > NOTE_LIMIT:
        kept.pop(0)  # past MLflow's 8,000 characters of a tag, other metrics' answers give way first
    rest = "".join("\n\n" + sec for sec in [*kept, answer])
    room = NOTE_LIMIT - len(rest)  # then the description, never this answer
    return (head if len(head) <= room else head[:max(0, room - 1)] + "…") + rest


def log_export(uri: str, parent_run_id: str, folder: Path, artifact_path: str, metrics: dict | None = None,
               tags: dict | None = None, answer: tuple[str, list[str]] | None = None,
               files: list[Path] | None = None) -> None:
    """The exported figures, landscape.json and report as artifacts of the study's parent run (under
    `artifact_path`): `files` (what this export wrote; default every file directly in `folder`), never anything
    else the folder holds. With the answer as parent metrics (per-arm slope, interval, best η, λ and metric),
    the verdicts as tags and, given `answer` (metric, verdict lines), in the run's description."""
    client = _reader(uri, adopt=True)
    for f in files if files is not None else sorted(p for p in Path(folder).iterdir() if p.is_file()):
        _retry("logging the export", client.log_artifact, parent_run_id, str(f), artifact_path)
    ts = int(time.time() * 1000)
    ms = [Metric(k, float(v), ts, 0) for k, v in (metrics or {}).items() if v is not None and math.isfinite(float(v))]
    tags = dict(tags or {})
    if answer is not None:
        note = _retry("reading the parent run", client.get_run, parent_run_id).data.tags.get("mlflow.note.content", "")
        tags["mlflow.note.content"] = note_with_answer(note, answer[0], answer[1], f"{artifact_path}/report.html")
    ts_tags = [RunTag(k, str(v)[:NOTE_LIMIT if k == "mlflow.note.content" else 5000]) for k, v in tags.items()]
    for i in range(0, max(len(ms), 1), 900):
        _retry("logging the verdict", client.log_batch, parent_run_id, metrics=ms[i:i + 900], tags=ts_tags if i == 0 else [])
