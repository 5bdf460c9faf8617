"""Cluster-grade stores and their faults: a real `mlflow server` that goes away and comes back, and
PostgreSQL as the Optuna storage and the MLflow backend store."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from test_service import check_records, run_ok, study_cmd, write_spec

POSTGRES = os.environ.get("STUDY_TEST_POSTGRES")  # .ci/run starts PostgreSQL on 127.0.0.1 and sets this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` process on 127.0.0.1 that a test can stop and start again."""

    def __init__(self, backend: str, artifacts: Path):
        self.backend, self.artifacts, self.port = backend, artifacts, _free_port()
        self.proc = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend, "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1", "--artifacts-destination", str(self.artifacts)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return self
            except OSError:
                assert time.time() < deadline and self.proc.poll() is None, "mlflow server did not start"
                time.sleep(0.5)

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def test_tracking_server_down_for_a_while_loses_nothing(tmp_path):
    home = tmp_path / "home"
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts").start()
    spec = write_spec(tmp_path / "outage.yaml", "outage", small=True)
    proc = subprocess.Popen(study_cmd(home, "run", str(spec), "--tracking-uri", server.uri),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "STUDY_TEST_SLOW_EPOCH_S": "1", "STUDY_LOG_INTERVAL_S": "0"})
    try:
        client = MlflowClient(server.uri)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            exp = client.get_experiment_by_name("outage")
            if exp and client.search_runs([exp.experiment_id], "metrics.`train/loss` > 0", max_results=1):
                break  # epochs are being recorded: now take the server away
            time.sleep(0.5)
        assert proc.poll() is None
        lines: list[str] = []
        told = threading.Event()  # the driver has met the outage and says it is retrying

        def read_stderr():
            for line in proc.stderr:
                lines.append(line)
                if "tracking store unreachable" in line and "retrying" in line:
                    told.set()

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        server.stop()
        assert told.wait(timeout=180), "".join(lines)[-3000:]  # the outage was met, not just scheduled
        server.start()  # same port, same backend store
        proc.wait(timeout=400)
        reader.join(timeout=60)
        err = "".join(lines)
        assert proc.returncode == 0, err[-3000:]
        check_records(home, spec, tracking_uri=server.uri)  # nothing lost, nothing twice
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()


@pytest.fixture
def postgres_dbs():
    if not POSTGRES:
        pytest.skip("needs PostgreSQL: set STUDY_TEST_POSTGRES=postgresql://USER:PASS@127.0.0.1:5432 (.ci/run does)")
    import psycopg

    names = [f"study_test_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("optuna", "mlflow")]
    admin = psycopg.connect(f"{POSTGRES}/postgres", autocommit=True)
    with admin.cursor() as cur:
        for n in names:
            cur.execute(f"CREATE DATABASE {n}")
    yield [f"{POSTGRES}/{n}" for n in names]
    with admin.cursor() as cur:
        for n in names:
            cur.execute(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")
    admin.close()


def test_looking_for_a_lease_creates_no_schema_in_an_empty_database(postgres_dbs):
    """`study list --storage URL` reads driver leases; a database without Optuna's tables gets none written."""
    import sqlalchemy

    from study.search import read_lease

    url = postgres_dbs[0]
    assert read_lease(url, "nosuch") == (False, "no lease")
    engine = sqlalchemy.create_engine(url)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_postgres_as_optuna_storage_and_mlflow_backend(tmp_path, postgres_dbs):
    optuna_url, mlflow_url = postgres_dbs
    server = MlflowServer(mlflow_url, tmp_path / "artifacts").start()
    try:
        home = tmp_path / "home"
        spec = write_spec(tmp_path / "pg.yaml", "pg", small=True)
        out = run_ok(home, "run", str(spec), "--storage", optuna_url, "--tracking-uri", server.uri)
        check_records(home, spec, tracking_uri=server.uri, storage=optuna_url)
        assert "View run" not in out.stdout + out.stderr  # MLflow's link per finished run stays out of the output
        assert not (home / "mlflow.db").exists() and not (home / "pg" / "optuna.db").exists()  # no SQLite used
        # the parent run's spec went through the server's artifact proxy
        exp = MlflowClient(server.uri).get_experiment_by_name("pg")
        parent = MlflowClient(server.uri).search_runs([exp.experiment_id], "tags.role = 'parent'")[0]
        assert {"spec.yaml", "spec.json"} <= {f.path for f in MlflowClient(server.uri).list_artifacts(parent.info.run_id)}
        # resume finds the study's own Optuna storage, whose password was never recorded: it asks for it again
        out = subprocess.run(study_cmd(home, "resume", "pg", "--tracking-uri", server.uri), capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 2 and "pass it again with its password" in out.stderr.strip().splitlines()[-1], out.stderr
        assert "study:study@" not in out.stderr and not (home / "pg" / "optuna.db").exists()  # no password, no default
        run_ok(home, "resume", "pg", "--storage", optuna_url, "--tracking-uri", server.uri)
        check_records(home, spec, tracking_uri=server.uri, storage=optuna_url)
    finally:
        server.stop()



def test_a_driver_whose_lease_was_taken_over_notices(tmp_path, monkeypatch):
    """A driver that stalled past the lease's stale time and lost it to another: its heartbeat sees the other
    holder, stops renewing, and says who holds the study now (the driver then halts and writes nothing)."""
    import optuna

    from study.search import Lease, open_storage

    monkeypatch.setattr(Lease, "BEAT_S", 0.05)
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    lease = Lease(storage, "taken")
    try:
        other = "pid 4242 on another-host"
        optuna.load_study(study_name="taken.driver", storage=storage).set_user_attr("holder", other)
        deadline = time.time() + 60
        while lease.taken_by is None:
            assert time.time() < deadline, "the heartbeat never noticed the other holder"
            time.sleep(0.05)
        assert lease.taken_by == other
        lease.heartbeat.join(timeout=30)  # the heartbeat has stopped: it never renews the other's lease
        assert not lease.heartbeat.is_alive()
    finally:
        lease.release()  # not ours any more: left to its holder
    assert optuna.load_study(study_name="taken.driver", storage=storage).user_attrs["holder"] == other


def test_a_lease_created_but_not_yet_stamped_is_not_taken_over(tmp_path, monkeypatch):
    """Two drivers started together on a loaded machine: one has created the lease and not yet written its
    holder and heartbeat. The other waits for them and is refused; it never deletes that lease as stale."""
    import socket

    import optuna

    from study import search
    from study.search import Lease, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    first = optuna.create_study(study_name="race.driver", storage=storage)  # created, unstamped
    holder = f"pid {os.getppid()} on {socket.gethostname()}"  # a live process on this host
    real_sleep, stamped = time.sleep, []

    def stamp_while_the_other_waits(s):  # the first driver stamps its lease while the second polls it
        if not stamped:
            for k, v in (("holder", holder), ("host", socket.gethostname()), ("pid", os.getppid()),
                         ("heartbeat", time.time())):
                first.set_user_attr(k, v)
            stamped.append(True)
        real_sleep(s)

    monkeypatch.setattr(search.time, "sleep", stamp_while_the_other_waits)
    with pytest.raises(search.StoreError, match="being run by another driver"):
        Lease(storage, "race")
    assert stamped, "the second driver did not wait for the lease to be stamped"
    assert optuna.load_study(study_name="race.driver", storage=storage).user_attrs["holder"] == holder


def test_a_lease_whose_creator_died_before_stamping_it_is_taken_over(tmp_path, monkeypatch):
    import optuna

    from study.search import Lease, open_storage

    monkeypatch.setattr(Lease, "STALE_S", 0.5)
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    optuna.create_study(study_name="orphan.driver", storage=storage)  # its creator died right after
    lease = Lease(storage, "orphan")
    try:
        assert optuna.load_study(study_name="orphan.driver", storage=storage).user_attrs["holder"] == lease.holder
    finally:
        lease.release()


def test_two_drivers_taking_over_one_stale_lease_never_delete_each_others(tmp_path, monkeypatch):
    """The driver of a study died (its lease is stale) and two new drivers start at once: both read the stale
    lease. The faster one deletes it and creates its own under the same name (in SQLite with the same id, the
    lease being the newest study); the slower one must then be refused, not delete that new lease and run too."""
    import socket

    import optuna

    from study import search
    from study.search import Lease, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    stale = optuna.create_study(study_name="both.driver", storage=storage)
    for k, v in (("holder", "pid 4242 on gone-host"), ("host", "gone-host"), ("pid", 4242), ("heartbeat", 0.0)):
        stale.set_user_attr(k, v)
    faster = f"pid {os.getppid()} on {socket.gethostname()}"  # a live process on this host
    read_stale, took_over = Lease._stamped, []

    def the_faster_takes_over_now(self, st):  # the slower driver has read the stale lease; the faster one acts
        found = read_stale(self, st)
        if not took_over:
            old_id = st.get_study_id_from_name("both.driver")
            optuna.delete_study(study_name="both.driver", storage=st)
            new = optuna.create_study(study_name="both.driver", storage=st)
            for k, v in (("holder", faster), ("host", socket.gethostname()), ("pid", os.getppid()),
                         ("heartbeat", time.time())):
                new.set_user_attr(k, v)
            took_over.append(new._study_id == old_id)
        return found

    monkeypatch.setattr(Lease, "_stamped", the_faster_takes_over_now)
    with pytest.raises(search.StoreError, match="being run by another driver"):
        Lease(storage, "both")
    assert took_over == [True]  # the new lease got the stale one's id: deleting by id alone would not do
    assert optuna.load_study(study_name="both.driver", storage=storage).user_attrs["holder"] == faster
