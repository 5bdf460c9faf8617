import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

# Every test's traffic stays on 127.0.0.1; throwaway Ray clusters run without token authentication.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Ray starts its workers (the trials) at nice 15, so on a machine busy with other work they get a few percent
# of a core and every study in the suite stalls. The tests check the service, not Ray's priorities: trials run
# at the tests' own priority, raylets and drivers inherit this from the test process.
os.environ.setdefault("RAY_worker_niceness", "0")
os.environ.pop("STUDY_CONV_TABLE", None)  # a measured table of the machine would change which convolutions the tests run

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


def headless_chromium():
    """Debian's chromium through chromium-driver, headless, no sandbox, no GPU, no background network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
              "--window-size=1400,1000"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
SHARED_CIFAR = (ROOT.parent / "shared" / "data" / "cifar10").resolve()


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Decoded-data cache in a per-session temp folder, so tests never depend on a user's cache."""
    if "STUDY_CACHE" not in os.environ:
        os.environ["STUDY_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri(monkeypatch):
    """A test's stores are its own: never inherit an MLFLOW_TRACKING_URI (mlflow.set_tracking_uri sets it)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """One finished `study run --smoke` of the main job's spec (quickstart) through Ray, Optuna and MLflow, shared
    by every test that reads a real finished study (CLI, browser, portable homes, the smoke test itself; one per
    pytest-xdist worker, in the worker's own temp folder, since the portable-home tests move it away and back;
    pytest-xdist's grouping, xdist_group with --dist loadgroup, renames items through a field pytest 9.2 no longer
    reads, so it cannot put these tests on one worker): `.home`,
    and `.out` the finished command. Started with a --set override (seeds 3, 4; --smoke keeps the first). Tests
    must leave it as they found it: copy it to change it."""
    home = tmp_path_factory.mktemp("smoke") / "home"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}   # its own stores, under home
    out = subprocess.run([sys.executable, "-m", "study.cli", "--home", str(home), "run", "--smoke",
                          str(ROOT / "search_spaces" / "quickstart.yaml"), "--set", "search.seeds=[3,4]"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return SimpleNamespace(home=home, out=out)
