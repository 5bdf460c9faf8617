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

from conftest import headless_chromium, needs_chromium

pytestmark = needs_chromium
SHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium()
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

    from selenium.webdriver.support.ui import WebDriverWait

    lands = landscapes(_members())
    runs = {(L.arm, lr, wd): f"run{i}" for i, (L, lr, wd) in enumerate(
        (L, lr, wd) for L in lands for lr in L.lr for wd in L.weight_decay)}
    files = render("browser-check", "test_error", lands, load_dashboard("default"), tmp_path, ("png", "html"),
                   "name: browser-check\n", runs=(runs, "7"))
    report = tmp_path / "report.html"
    assert report in files and (tmp_path / "landscape.json") in files
    assert report.read_text().count('href="/#/experiments/7/runs/run') == len(runs)  # every cell links its run
    browser.get(report.as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
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
    links = browser.find_elements(By.CSS_SELECTOR, "a.run")
    assert len(links) == len(runs) and not any(a.get_dom_attribute("href") for a in links)  # no UI beside a file
    browser.save_screenshot(str(SHOTS / "report.png"))


def _stop_ui(proc) -> None:
    os.kill(proc.pid, signal.SIGTERM)  # the `study ui` process alone, as a service manager would
    proc.wait(timeout=60)


def _assert_stopped(children, *ports) -> None:
    """`study ui` stopped its whole tree: no process left, nothing listening on its ports."""
    psutil.wait_procs(children, timeout=30)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def _free_port(pair: bool = False) -> int:
    """A port nothing listens on now; `pair`: one whose next port is free too (`study ui --study` serves
    optuna-dashboard on port + 1)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not pair:
            return port
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no pair of free ports found")


@pytest.fixture
def quickstart_home(smoke_study):
    """A home holding one real finished study: the session's `study run search_spaces/quickstart.yaml --smoke`
    (conftest; parent run with the exported figures and per-arm metrics, a child run per member with grouped
    per-epoch metrics)."""
    return smoke_study.home


def _records(home: Path):
    """What the store holds, read with MLflow's client: the experiment, its parent run and its member runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quickstart-smoke")  # --smoke records in an experiment of its own
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("role") == "parent")
    members = sorted((r for r in runs if r.data.tags.get("role") == "member"), key=lambda r: r.info.run_name)
    figures = parent.data.tags[f"landscape.{parent.data.params['metric']}.default"]  # landscape/<metric>/default
    files = [a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(parent.info.run_id, figures)]
    return exp, runs, parent, members, figures, files


def _start_ui(home: Path, port: int, *extra: str):
    """`study ui` with its stdout read line by line; at the moment each line arrives the reader asks the server's
    /health, so the test knows whether a URL was printed before the server answered."""
    import queue
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "--home", str(home), "ui", "--port", str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()

    def read():
        for line in proc.stdout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    answering = r.status == 200
            except OSError:
                answering = False
            lines.put((line.rstrip("\n"), answering))
        lines.put((None, False))

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def _wait_line(proc, lines, startswith: str, timeout: float = 180) -> tuple[str, bool, list[str]]:
    import queue

    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            line, answering = lines.get(timeout=1)
        except queue.Empty:
            continue
        assert line is not None, f"study ui ended (rc {proc.poll()}) before printing {startswith!r}: {seen}"
        seen.append(line)
        if line.strip().startswith(startswith):
            return line, answering, seen
    raise AssertionError(f"study ui printed no {startswith!r} line in {timeout} s: {seen}")


def test_study_ui_walk_from_home_page_to_runs_members_and_figures(browser, quickstart_home, tmp_path):
    """By clicks only, from the printed root URL: the home page, the experiment (its runs table, not MLflow's
    GenAI Traces overview), a member run's grouped metric sections, back, the parent run's metrics and figures."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    exp, runs, parent, members, figures, files = _records(quickstart_home)
    member = members[0]
    arm_metrics = [k for k in parent.data.metrics if "." in k]
    # study run exports per-arm metrics (a 2 × 2 smoke grid brackets no optimum, so it has no slope to log)
    assert "sgd-coupled.best_lr" in arm_metrics and "sgd-independent.best_test_loss" in arm_metrics
    sections = {}
    for key in member.data.metrics:
        if "/" in key:
            sections[key.split("/")[0]] = sections.get(key.split("/")[0], 0) + 1
    assert {"train", "test", "decay", "schedule"} <= set(sections)
    assert "heatmaps.png" in files

    port = _free_port()
    root = f"http://127.0.0.1:{port}/"
    runs_url = f"{root}#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    proc, lines = _start_ui(quickstart_home, port)
    children = []
    wait = WebDriverWait(browser, 60, poll_frequency=0.25)
    shots = []

    def shot(name):
        path = tmp_path / f"{len(shots) + 1:02d}_{name}.png"
        browser.save_screenshot(str(path))
        shutil.copy(path, SHOTS / f"ui_walk_{path.name}")
        shots.append(path)

    def body():
        return browser.find_element(By.TAG_NAME, "body").text

    def charts_drawn(prefix):
        """Every chart of a metric section `prefix/` has its plot drawn (the chart's own box holds a Plotly plot)."""
        return browser.execute_script("""
            const titles = [...document.querySelectorAll('h4[title^="' + arguments[0] + '/"]')];
            return titles.length > 0 && titles.every(h => {
                for (let a = h.parentElement; a && a.querySelectorAll('h4[title]').length === 1; a = a.parentElement)
                    if (a.querySelector('.js-plotly-plot')) return true;
                return false;
            });""", prefix)

    def scroll_to(text):
        """Scroll the element reading exactly `text` to the middle of the window (for the screenshot)."""
        el = next(e for e in browser.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']")
                  if e.is_displayed())
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)

    def click_text(text, css="a"):
        """Click the first visible element matching css whose text is exactly `text`, once it is shown."""
        el = wait.until(lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, css)
                                        if e.is_displayed() and e.text.strip() == text), False),
                        f"no {css} reading {text!r} on {browser.current_url}")
        el.click()

    try:
        # the URLs come only once the server answers: the root and each study's runs table, exactly
        line, answering, seen = _wait_line(proc, lines, "MLflow UI:")
        assert line.split()[2] == root and answering, (line, answering)
        line, answering, seen = _wait_line(proc, lines, "quickstart-smoke:")
        assert line.split(": ", 1)[1] == runs_url and answering, (line, answering)
        children = psutil.Process(proc.pid).children(recursive=True)

        # the home page, as a browser that never chose GenAI or Model training sees it
        browser.get(root)
        click_text(exp.name)  # the experiment in the home page's list
        wait.until(lambda d: f"/experiments/{exp.experiment_id}/runs" in d.current_url
                   and d.find_elements(By.CSS_SELECTOR, ".ag-row"), "the click did not open the runs table")
        assert browser.current_url.startswith(runs_url)  # where the printed URL leads, too
        wait.until(lambda d: f"{len(runs)} matching runs" in body())  # the parent run and its members
        text = body()
        assert parent.info.run_name in text and "No data available" not in text and "/overview" not in \
            browser.current_url  # the runs table, not the GenAI Traces overview
        assert browser.execute_script("return localStorage.getItem('mlflow.workflowType_v1')") == \
            '"machine_learning"'
        shot("runs_table")

        # a member run: expand the parent row, click the member, its "Model metrics" tab: one section per prefix
        browser.find_element(By.CSS_SELECTOR, ".ag-row button[data-component-id*='runnamecellrenderer']").click()
        click_text(member.info.run_name, ".ag-row a")
        wait.until(lambda d: d.current_url.rstrip("/").endswith(f"/runs/{member.info.run_id}"))
        click_text("Model metrics", "[role=tab]")
        lined = lambda: "\n" + body() + "\n"  # noqa: E731
        wait.until(lambda d: all(f"\n{p}\n({n})\n" in lined() for p, n in sections.items()),
                   f"metric sections {sections} not shown")
        text = body()
        assert member.info.run_name in text and "weight_norm" in text and "angular_update" in text
        wait.until(lambda d: charts_drawn("decay"), "the decay/ charts were not drawn")
        shot("member_metric_sections")
        scroll_to("train")  # the sections further down: test, time, train
        wait.until(lambda d: charts_drawn("train"), "the train/ charts were not drawn")
        shot("member_metric_sections_train_test")

        # back to the runs table, then the parent run: the study's metrics, per arm, and its figures
        for _ in range(4):
            if "/runs?" in browser.current_url and browser.find_elements(By.CSS_SELECTOR, ".ag-row"):
                break
            browser.back()
            WebDriverWait(browser, 10, poll_frequency=0.25).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".ag-row")
                                                                  or "/runs/" in d.current_url)
        wait.until(lambda d: f"/experiments/{exp.experiment_id}/runs?" in d.current_url
                   and d.find_elements(By.CSS_SELECTOR, ".ag-row"), "back did not return to the runs table")
        click_text(parent.info.run_name, ".ag-row a")
        wait.until(lambda d: d.current_url.rstrip("/").endswith(f"/runs/{parent.info.run_id}")
                   and f"Metrics ({len(parent.data.metrics)})" in body())
        text = body()
        missing = [k for k in parent.data.metrics if k not in text]
        assert not missing, missing
        scroll_to("sgd-coupled.best_lr")
        shot("parent_metrics")
        click_text("Artifacts", "[role=tab]")
        for name in figures.split("/") + ["heatmaps.png"]:
            click_text(name, "[data-testid=artifact-tree-node]")
        wait.until(lambda d: any(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 600",
                                                  im) for im in d.find_elements(By.TAG_NAME, "img")),
                   "the heatmaps figure never showed")
        assert f"{figures}/heatmaps.png" in body()
        shot("parent_figure")
    finally:
        _stop_ui(proc)
    _assert_stopped(children, port)
    assert len(shots) == 5


def test_optuna_dashboard_contour_is_lr_by_weight_decay(browser, quickstart_home, tmp_path):
    """`study ui --study NAME` also serves optuna-dashboard. By clicks from its home page: an arm's study, its
    analytics page, whose contour is lr × weight_decay (the seed is a repetition, never a parameter), with the
    objective named after the study's metric; its top page has learning curves (intermediate values)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not Path(sys.executable).with_name("optuna-dashboard").is_file():
        pytest.skip("optuna-dashboard is not installed (the `dashboard` extra)")
    name = next(p.name for p in quickstart_home.iterdir() if (p / "optuna.db").is_file())
    for attempt in range(3):  # another process may take a chosen port before `study ui` binds it: a new pair
        port = _free_port(pair=True)
        proc, lines = _start_ui(quickstart_home, port, "--study", name)
        try:
            line, _, _ = _wait_line(proc, lines, "optuna-dashboard:")
            break
        except AssertionError as e:
            if proc.poll() is None:          # any other failure: leave no server behind
                os.killpg(proc.pid, signal.SIGTERM)
            if "is not free" not in str(e) or attempt == 2:
                raise
    wait = WebDriverWait(browser, 120, poll_frequency=0.25)
    body = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
    try:
        url = line.split()[1]
        deadline = time.time() + 120
        while True:  # printed once MLflow answers; the dashboard starts beside it
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "optuna-dashboard never answered"
                time.sleep(0.5)
        browser.get(url)
        study = f"{name}.sgd-coupled"
        link = wait.until(lambda d: next((a for a in d.find_elements(By.CSS_SELECTOR, "a[href*='/dashboard/studies/']")
                                          if study in a.text and f"{study}.settings" not in a.text), None),
                          "the arm's study is not on the home page")
        link.click()
        wait.until(lambda d: "Intermediate values" in body() and "Hyperparameter Importance" in body())
        top = body()
        assert "test_loss" in top, top[:2000]  # the objective is named after the study's metric
        importance = top[top.index("Hyperparameter Importance"):]
        importance = importance[:importance.index("Timeline")] if "Timeline" in importance else importance
        assert "lr" in importance.split() and "weight_decay" in importance.split(), importance
        assert "seed" not in importance, importance  # the seed is a repetition, never a searched parameter
        browser.save_screenshot(str(tmp_path / "dashboard_top.png"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "a[href$='/analytics']")).pop().click()
        wait.until(lambda d: "Contour" in body() and len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) >= 2)
        text = body()
        contour = text[text.index("Contour"):]
        assert contour.split()[:5] == ["Contour", "x:", "lr", "y:", "weight_decay"], contour[:200]
        assert "Param seed" not in text
        browser.execute_script("arguments[0].scrollIntoView()",
                               browser.find_element(By.XPATH, "//*[normalize-space(text())='Contour']"))
        browser.save_screenshot(str(tmp_path / "dashboard_contour.png"))
        browser.save_screenshot(str(SHOTS / "dashboard_contour.png"))
        # the arm's settings study, at the address `study ui` printed: its best trial is the study's best cell
        line, _, _ = _wait_line(proc, lines, f"{study}.settings (settings, mean over seeds):")
        browser.get(line.split("): ", 1)[1])
        wait.until(lambda d: "Best Trial" in body() or "Best Trials" in body(), "the settings study never showed")
        from study.landscape import landscapes
        from study.tracking import read_study

        _, _, metric, recorded = read_study(f"sqlite:///{quickstart_home / 'mlflow.db'}", name)
        land = next(L for L in landscapes(recorded, metric=metric) if L.arm == "sgd-coupled")
        text = body()
        best = text[text.index("Best Trial"):]
        assert f"{land.best['error']}" in best[:400] or f"{land.best['error']:.6g}"[:6] in best[:400], best[:400]
        assert str(land.best["lr"]) in best and str(land.best["weight_decay"]) in best, best[:600]
        browser.save_screenshot(str(SHOTS / "dashboard_settings_study.png"))
        children = psutil.Process(proc.pid).children(recursive=True)
    finally:
        _stop_ui(proc)
    assert proc.returncode == 0
    _assert_stopped(children, port, port + 1)  # MLflow's proxy and the dashboard


def test_study_ui_prints_views_that_open_on_the_question(browser, quickstart_home, tmp_path):
    """`study ui` prints, per study, views that open on the question: the seed-averaged settings ranked by the
    study's metric with lr, weight decay and the metric as columns (its first row is the study's best cell), and
    per arm a contour of log10 λ × log10 η → the metric over that arm's settings only. Opened as printed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from study.landscape import landscapes
    from study.tracking import read_study

    exp, runs, parent, members, figures, files = _records(quickstart_home)
    settings = [r for r in runs if r.data.tags.get("role") == "setting"]
    metric = parent.data.params["metric"]
    _, _, _, recorded = read_study(f"sqlite:///{quickstart_home / 'mlflow.db'}", "quickstart-smoke")
    best = min(landscapes(recorded, metric=metric), key=lambda L: L.best["error"])  # the study's best cell
    top = min(settings, key=lambda r: r.data.metrics[f"final_{metric}"])
    assert (float(top.data.params["lr_exact"]), float(top.data.params["weight_decay_exact"])) == \
        (best.best["lr"], best.best["weight_decay"]) and top.data.tags["arm"] == best.arm
    port = _free_port()
    proc, lines = _start_ui(quickstart_home, port)
    wait = WebDriverWait(browser, 90, poll_frequency=0.25)
    body = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
    browser.set_window_size(2000, 1000)  # the table draws only the columns in sight (beside MLflow's assistant panel)
    try:
        _wait_line(proc, lines, "quickstart-smoke:")
        line, _, _ = _wait_line(proc, lines, "settings, mean over seeds, best first:")
        browser.get(line.split(": ", 1)[1])
        wait.until(lambda d: f"{len(settings)} matching runs" in body() and d.find_elements(By.CSS_SELECTOR, ".ag-row"))
        names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".ag-center-cols-container .ag-row a")
                 if e.text] or [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".ag-row a") if e.text]
        assert names and names[0] == top.info.run_name, names  # ranked as the study ranks: its best cell first
        shown = set(body().splitlines())  # column headers are lines of their own
        assert {"lr", "weight_decay", f"final_{metric}", "seeds"} <= shown, sorted(shown)[:80]
        assert browser.execute_script("return document.querySelector('.ag-row a').scrollWidth <= "
                                      "document.querySelector('.ag-row a').clientWidth + 1")  # the name is not cut
        browser.save_screenshot(str(SHOTS / "ui_view_settings.png"))
        line, _, _ = _wait_line(proc, lines, "landscape of sgd-coupled")
        browser.get(line.split(": ", 1)[1])
        arm = [r for r in settings if r.data.tags["arm"] == "sgd-coupled"]
        wait.until(lambda d: f"{len(arm)} matching runs" in body() and "sgd-coupled: the landscape" in body()
                   and d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"), "the landscape charts never showed")
        assert "sgd-independent lr=" not in body()  # this arm's settings only
        browser.save_screenshot(str(SHOTS / "ui_view_landscape.png"))
        shutil.copy(SHOTS / "ui_view_landscape.png", tmp_path / "landscape.png")
        # the exported report, served beside the UI: a click on the best cell opens that setting's run
        line, _, _ = _wait_line(proc, lines, "report:")
        browser.get(line.split(": ", 1)[1].split()[0])
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "table#arms"), "the served report never showed")
        links = browser.find_elements(By.CSS_SELECTOR, "a.run")
        assert len(links) == len(settings) and all(a.get_dom_attribute("href") for a in links)
        best_cell = next(a for a in links if a.get_dom_attribute("href").endswith(f"/runs/{top.info.run_id}"))
        browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))",
                               best_cell.find_element(By.TAG_NAME, "rect"))
        wait.until(lambda d: f"/runs/{top.info.run_id}" in d.current_url and top.info.run_name in body(),
                   "the report's best cell did not open its setting run")
        browser.save_screenshot(str(SHOTS / "report_served_run.png"))
    finally:
        browser.set_window_size(1400, 1000)
        _stop_ui(proc)


def test_the_live_landscape_shows_a_study_as_it_stands(browser, tmp_path):
    """A study stopped part way (its driver killed): `study ui` prints its live landscape, which draws the grid it
    will be with the cells not finished yet marked, says how many members are in and reloads itself; once
    `study resume` has finished it, a reload shows every cell and no longer reloads."""
    import yaml
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from test_service import _completed_trials, study_cmd, write_spec

    raw = yaml.safe_load(write_spec(tmp_path / "live.yaml", "live", members_per_trial=2, max_concurrent=1).read_text())
    raw["arms"] = raw["arms"][:1]
    raw["arms"][0]["weight_decay"]["points"] = 3  # 2 × 3 cells × 2 seeds = 12 members in arrays of 2
    (tmp_path / "live.yaml").write_text(yaml.safe_dump(raw))
    home = tmp_path / "home"
    proc = subprocess.Popen(study_cmd(home, "run", str(tmp_path / "live.yaml")), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "STUDY_TEST_SLOW_EPOCH_S": "1"})
    deadline = time.time() + 300
    while _completed_trials(home, "live") < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = _completed_trials(home, "live")
    assert 2 <= finished < 12
    port = _free_port()
    ui, lines = _start_ui(home, port)
    wait = WebDriverWait(browser, 120, poll_frequency=0.25)
    body = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
    try:
        line, _, _ = _wait_line(ui, lines, "live landscape:")
        browser.get(line.split(": ", 1)[1])
        wait.until(lambda d: "members finished" in body(), "the live page never showed")
        assert f"{finished} of 12 members finished" in body(), body()[:500]
        pending = browser.find_elements(By.CSS_SELECTOR, "rect.cell.pending")
        cells = browser.find_elements(By.CSS_SELECTOR, "rect.cell")
        assert len(cells) == 6 and 0 < len(pending) < 6, (len(cells), len(pending))  # the whole grid, some not done
        assert all(p.find_element(By.TAG_NAME, "title").get_attribute("textContent").endswith("not finished yet")
                   for p in pending)
        assert browser.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]")  # it reloads itself
        assert "provisional" in body()
        browser.save_screenshot(str(SHOTS / "live_landscape_partial.png"))
        out = subprocess.run(study_cmd(home, "resume", "live"), capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        browser.refresh()
        wait.until(lambda d: "12 of 12 members finished" in body(), "the reload did not show the finished study")
        assert not browser.find_elements(By.CSS_SELECTOR, "rect.cell.pending")
        assert len(browser.find_elements(By.CSS_SELECTOR, "rect.cell")) == 6
        assert not browser.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]") and "(finished)" in body()
        browser.save_screenshot(str(SHOTS / "live_landscape_finished.png"))
        links = browser.find_elements(By.CSS_SELECTOR, "figure.heatmap a")
        assert len(links) == 6  # every finished cell opens its seed-averaged setting run, on the same server
        browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))",
                               links[0].find_element(By.TAG_NAME, "rect"))
        wait.until(lambda d: "/runs/" in d.current_url and "mean of 2 seeds" in body(),
                   "a cell did not open its setting run")
    finally:
        _stop_ui(ui)
