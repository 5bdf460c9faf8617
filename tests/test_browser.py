"""What a person sees: the HTML report and the MLflow UI started by `study ui`, in headless Chromium."""

import math
import os
import signal
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest

from study.landscape import landscapes
from study.report import load_dashboard, render
from study.spec import MemberSpec, spec_from_dict
from study.tracking import Tracker

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
SHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
              "--window-size=1400,1000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _members():
    rng = np.random.default_rng(0)
    out = []
    for opt, decay, slope in (("sgd", "coupled", -1.0), ("sgd", "independent", 0.0), ("adam", "decoupled", -1.0)):
        for seed in (0, 1):
            for lr in np.geomspace(0.01, 0.3, 5):
                c = math.log(3e-3) + slope * math.log(lr / 0.055)
                for wd in np.geomspace(1e-4, 1.0, 6):
                    diverged = opt == "adam" and lr > 0.2 and wd > 0.5
                    out.append(dict(optimizer=opt, decay=decay, lr=float(lr), weight_decay=float(wd), seed=seed,
                                    error=0.1 + 0.02 * (math.log(wd) - c) ** 2 + rng.normal(0, 0.01),
                                    diverged=diverged))
    return out


def test_report_renders_offline_with_figures_and_arm_table(browser, tmp_path):
    from selenium.webdriver.common.by import By

    lands = landscapes(_members(), n_boot=100)
    files = render("browser-check", "test_error", lands, load_dashboard("default"), tmp_path, ("png", "html"),
                   "name: browser-check\n")
    report = tmp_path / "report.html"
    assert report in files and (tmp_path / "landscape.json") in files
    browser.get(report.as_uri())
    time.sleep(2)
    # nothing is fetched at view time: no external scripts, styles or other resources
    assert browser.execute_script("return document.querySelectorAll('script[src], link[href]').length") == 0
    assert browser.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.startsWith('http')).length") == 0
    rows = browser.find_elements(By.CSS_SELECTOR, "table#arms tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == ["adam-decoupled", "sgd-coupled",
                                                                          "sgd-independent"]
    images = browser.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) == 3
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 200", im)
               for im in images)
    plots = browser.find_elements(By.CSS_SELECTOR, "figure.heatmap svg")
    assert len(plots) == 3  # every interactive heatmap drawn as inline SVG
    assert all(p.find_elements(By.CSS_SELECTOR, "rect.cell title") for p in plots)
    browser.save_screenshot(str(SHOTS / "report.png"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_ui_lists_the_study_and_its_member_runs(browser, tmp_path):
    from selenium.webdriver.common.by import By

    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    spec = spec_from_dict({"name": "uicheck", "arms": [{"optimizer": "sgd", "decay": "coupled",
                                                         "lr": {"low": 0.01, "high": 0.1},
                                                         "weight_decay": {"low": 1e-3, "high": 1e-2}}]})
    tracker = Tracker(uri, spec)
    tracker.start(artifact_location=(home / "artifacts").as_uri())
    names = []
    for i, (lr, wd) in enumerate([(0.01, 1e-3), (0.01, 1e-2), (0.1, 1e-3), (0.1, 1e-2)]):
        run_id = tracker.open_member(MemberSpec("sgd", "coupled", lr, wd), i, 128)
        tracker.log_epoch(run_id, {"epoch": 1, "train_loss": 1.0, "test_error": 0.5, "diverged": 0.0})
        tracker.finish_member(run_id, {"test_error": 0.5, "diverged": 0.0})
        names.append(f"sgd-coupled lr={lr:.3g} wd={wd:.3g} seed=0")
    tracker.finish_study()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "--home", str(home), "ui", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "study ui did not come up"
                time.sleep(1)
        browser.get(f"http://127.0.0.1:{port}/#/experiments/{tracker.experiment_id}/runs")
        deadline = time.time() + 60
        while not browser.find_elements(By.CSS_SELECTOR, ".ag-row button"):
            assert time.time() < deadline, "the experiment's runs never showed"
            time.sleep(1)
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "uicheck" in body and "5 matching runs" in body  # the parent run and its 4 member runs
        browser.find_elements(By.CSS_SELECTOR, ".ag-row button")[0].click()  # expand the parent run
        deadline = time.time() + 30
        while not all(n in browser.find_element(By.TAG_NAME, "body").text for n in names):
            assert time.time() < deadline, "member runs not listed under the study's parent run"
            time.sleep(1)
        browser.save_screenshot(str(SHOTS / "mlflow_ui.png"))
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children  # mlflow server and its workers
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # the `study ui` process alone, as a service manager would
        proc.wait(timeout=60)
    # it stopped its whole tree: no process left, nothing listening on the port
    psutil.wait_procs(children, timeout=30)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

