"""The cluster launcher's autoscaler, for real on one machine.

cluster.yaml starts a head with no CPU for trials and GPU workers at min_workers 0: every array of a study
runs on a worker that the autoscaler launches because the study's trials ask for it. Ray ships a local node
provider for exactly this (`provider: {type: fake_multinode}`, `RAY_FAKE_CLUSTER=1 ray start --head
--autoscaling-config=…`): its worker nodes are real raylets on this machine. The config below takes the head
and worker node types from cluster.yaml (GPUs declared as a resource, since this machine has none; the
members train on the CPU), and the cluster is stopped by its own process group (`ray stop` would end every
Ray on the machine). Checked: the autoscaler brings workers up from the study's demand, the arrays land on
them (not on the head), a worker killed mid-trial costs a retry and no record, and idle workers go away.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from test_service import check_records, study_cmd, write_spec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow    # two to four minutes: Ray starts a head and up to three worker nodes

WORKERS = 2


def autoscaling_config(port: int) -> dict:
    """cluster.yaml's node types on the fake provider: the head keeps CPU 0 (no trials), the GPU worker type
    declares one GPU and one CPU per node, at most WORKERS of them, idle for 6 s before they go."""
    c = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    head, worker = c["available_node_types"][c["head_node_type"]], c["available_node_types"]["gpu_worker"]
    assert head["resources"] == {"CPU": 0} and worker["min_workers"] == 0   # what this test stands in for
    empty = {k: [] for k in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                             "setup_commands", "head_setup_commands", "worker_setup_commands",
                             "head_start_ray_commands", "worker_start_ray_commands")}
    return {
        "cluster_name": f"fake-{c['cluster_name']}", "max_workers": WORKERS, "upscaling_speed": c["upscaling_speed"],
        "idle_timeout_minutes": 0.1,
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{port}", "use_node_id_as_ip": True,
                     "disable_launch_config_check": True, "disable_node_updaters": True},
        "auth": {"ssh_user": "nobody"},
        "available_node_types": {
            "ray.head.default": {"resources": head["resources"], "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0,
                           "max_workers": WORKERS}},
        "head_node_type": "ray.head.default", "file_mounts": {}, "file_mounts_sync_continuously": False, **empty,
    }


def _session(sid: int) -> list[int]:
    """Every process of one session (the cluster's head and the worker nodes its autoscaler started)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def _nodes(address: str) -> list[dict]:
    """The cluster's live nodes, read by a short-lived driver (this test process never joins a Ray)."""
    code = (f"import json, ray; ray.init(address={address!r}, logging_level='ERROR'); "
            "from ray.experimental.internal_kv import _internal_kv_get as get; "
            "print('NODES', json.dumps([{'id': n['NodeID'], 'resources': n['Resources'], "
            "'autoscaler': bool(get('__autoscaling_status'))} for n in ray.nodes() if n['Alive']]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("NODES "))[6:])


def _wait(what: str, cond, timeout: float, every: float = 1.0):
    deadline = time.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.time() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


@pytest.fixture
def autoscaling_cluster(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "autoscaling.json"
    config.write_text(json.dumps(autoscaling_config(port)))
    temp = tempfile.mkdtemp(prefix="rayfk", dir="/tmp")   # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "STUDY_TEST_SLOW_EPOCH_S": "4"}   # trials slow enough to hit
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=0",
                             "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", f"--autoscaling-config={config}",
                             "--include-dashboard=false"], env=env, start_new_session=True,
                            stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        _wait("the head's GCS", lambda: head.poll() is None and _answers(port), 120)
        yield address, head.pid, tmp_path / "head.log"
    finally:
        for sig, patience in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
            pids = _session(head.pid)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.time() + patience
            while _session(head.pid) and time.time() < deadline:
                time.sleep(0.5)
        head.wait(timeout=30)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _node_processes(node_id: str, sid: int) -> list[int]:
    """Every process of one fake worker node (its raylet and the workers it started): their environment names
    the node id the provider gave it."""
    out = []
    for pid in _session(sid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode() in environ:
            out.append(pid)
    return out


def test_the_autoscaler_brings_gpu_workers_up_for_a_study_and_takes_them_down(autoscaling_cluster, tmp_path):
    address, sid, head_log = autoscaling_cluster
    nodes = _wait("the autoscaler's first status", lambda: (n := _nodes(address)) and n[0]["autoscaler"] and n, 120)
    assert len(nodes) == 1 and "GPU" not in nodes[0]["resources"]   # the head alone, no GPU: workers at zero
    head_id = nodes[0]["id"]
    spec = write_spec(tmp_path / "auto.yaml", "autoscaled", small=True, members_per_trial=2, gpus_per_trial=1)
    home = tmp_path / "home"
    log = open(tmp_path / "study.log", "w")
    study = subprocess.Popen(study_cmd(home, "run", str(spec), "--address", address), stdout=log,
                             stderr=subprocess.STDOUT, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    try:
        def member_nodes() -> set[str]:
            db = home / "mlflow.db"
            if not db.exists():   # the driver links a complete store into place; opening it earlier would create one
                return set()
            client = MlflowClient(f"sqlite:///{db}")
            exp = client.get_experiment_by_name("autoscaled")
            runs = client.search_runs([exp.experiment_id], "tags.role = 'member'") if exp else []
            return {r.data.tags.get("ray_node_id") for r in runs} - {None, ""}

        # the arrays asked for {CPU: 1, GPU: 1}; only the worker type has it, so they run on launched workers
        on = _wait("members recorded on a worker node", member_nodes, 300)
        assert head_id not in on, on
        victim = sorted(on)[0]
        doomed = _wait("the processes of the worker that trains a member", lambda: _node_processes(victim, sid), 30)
        for pid in doomed:   # the node dies mid-trial, as a machine does: Tune retries the array from its checkpoint
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        assert study.wait(timeout=600) == 0, (tmp_path / "study.log").read_text()[-3000:]
    finally:
        if study.poll() is None:
            study.kill()
        log.close()
    out = (tmp_path / "study.log").read_text()
    assert "the Ray cluster has no GPU yet and runs an autoscaler" in out, out[-3000:]
    assert "training on CPUs" not in out                     # the GPU request was kept for the workers to come
    assert "1 array retried" in out, out[-3000:]             # the killed node's array ran again
    check_records(home, spec)                                # every member once, every epoch once, nothing lost
    assert head_id not in member_nodes()
    # idle workers go away (idle_timeout_minutes 0.1): the head is left alone
    _wait("idle workers to be removed", lambda: [n["id"] for n in _nodes(address)] == [head_id], 240, every=5)
