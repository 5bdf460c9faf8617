"""A real multi-node Ray cluster on 127.0.0.1 (ray.cluster_utils.Cluster, as Ray's own tests use):
a study runs across both nodes and survives a node being stopped mid-study; `ray job submit` runs it."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from test_service import check_records, study_cmd, write_spec


@pytest.fixture
def cluster():
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 1, "resources": {"head_node": 1}, "include_dashboard": False})
    worker = c.add_node(num_cpus=1, resources={"worker_node": 1})
    c.wait_for_nodes()
    yield c, worker
    c.shutdown()


def _member_runs(home: Path, name: str):
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], "tags.role = 'member'", max_results=1000) if exp else []


def _node_ids(home: Path, name: str) -> set[str]:
    return {r.data.tags.get("ray_node_id") for r in _member_runs(home, name)}


def _node_ids_while_running(home: Path, name: str) -> set[str]:
    """Poll the driver's store while it may still be creating its schema (opening it then can race)."""
    if not (home / "mlflow.db").exists():
        return set()
    try:
        return _node_ids(home, name)
    except Exception:
        return set()


def test_node_stopped_mid_study_trials_move_to_the_other_node(cluster, tmp_path):
    c, worker = cluster
    spec = write_spec(tmp_path / "nodefail.yaml", "nodefail", small=True, members_per_trial=1)
    home = tmp_path / "home"
    proc = subprocess.Popen(study_cmd(home, "run", str(spec), "--address", c.address),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "STUDY_TEST_SLOW_EPOCH_S": "4", "STUDY_LOG_INTERVAL_S": "0"})
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if worker.node_id in _node_ids_while_running(home, "nodefail"):
            break  # a trial on the worker node has reported its first epoch (4 s before its second)
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    c.remove_node(worker)  # the node dies with its trial mid-way
    try:
        out, err = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the study did not finish within 400 s of the node stopping:\n{out[-3000:]}\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    check_records(home, spec)  # every member once, every epoch once
    resumed = [r for r in _member_runs(home, "nodefail") if "resumed_from_epoch" in r.data.tags]
    assert resumed, "no trial was resumed from a checkpoint after its node stopped"
    # moved to the other node: with the worker's reports seen above, the study ran on both nodes
    assert {r.data.tags["ray_node_id"] for r in resumed} == {c.head_node.node_id}


def test_study_submitted_with_ray_job_submit(tmp_path):
    """`ray job submit` runs the driver on the cluster; RAY_ADDRESS points `study run` at it."""
    import socket

    from ray.job_submission import JobStatus, JobSubmissionClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 2, "include_dashboard": True, "dashboard_port": port,
                                "dashboard_host": "127.0.0.1"})
    try:
        c.wait_for_nodes()
        spec = write_spec(tmp_path / "jobsub.yaml", "jobsub", small=True)
        home = tmp_path / "home"
        address = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:  # the dashboard's job server comes up a little after the head
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                assert time.time() < deadline, "Ray's job server did not come up"
                time.sleep(1)
        entry = [sys.executable, "-m", "study.cli", "--home", str(home), "run", str(spec)]
        ray_cli = Path(sys.executable).with_name("ray")
        out = subprocess.run([str(ray_cli), "job", "submit", "--address", address, "--", *entry],
                             capture_output=True, text=True, timeout=400)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        jobs = JobSubmissionClient(address).list_jobs()
        assert [j.status for j in jobs] == [JobStatus.SUCCEEDED]
        assert "4/4 members recorded" in out.stdout
        check_records(home, spec)
        # without an address a study starts a Ray of its own, even with this cluster running on the machine (a bare
        # ray.init() joins the cluster last started here, and its trials die with it)
        probe = subprocess.run([sys.executable, "-c", "import ray; from study.tune import start_ray; start_ray(None); "
                                "print(ray.get_runtime_context().gcs_address)"],
                               capture_output=True, text=True, timeout=120,
                               env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        assert probe.returncode == 0, probe.stderr[-3000:]
        assert probe.stdout.split()[-1] != c.address
    finally:
        c.shutdown()
