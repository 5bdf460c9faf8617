"""`study ui`: the MLflow UI (and optuna-dashboard for one study) on this machine, behind a small proxy
that opens the UI on the studies' experiments; the servers are stopped as a process tree.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
import urllib.parse
from pathlib import Path

from .checks import check_name, home_dir, home_source, tracking_uri
from .spec import SpecError
from .stores import VIEW_TAG, default_storage, masked, why_no_file


def _check_port(host: str, port: int, flag: str = "--port") -> None:
    """The port is valid and free on `host`, or one line and exit 2, before any server starts."""
    if not 1 <= port <= 65535:
        raise SpecError(f"invalid {flag}: a TCP port lies in [1, 65535], but got port={port}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise SpecError(f"invalid --host: {host[:60]!r} is no address of this machine "
                        f"({getattr(e, 'strerror', None) or e})") from None
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # as the servers bind: connections of a UI just stopped (TIME_WAIT) do not make the port taken
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:  # a valid address, but none of this machine's interfaces has it
                raise SpecError(f"invalid --host: {host} is not an address of this machine ({e.strerror}); "
                                f"use 127.0.0.1 (or 0.0.0.0 for every interface)") from None
            raise SpecError(f"invalid {flag}: {host}:{port} is not free ({e.strerror}); choose another port") from None


def _wait_answering(url: str, procs, stopping=(), timeout: float = 180.0) -> bool:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if stopping or any(p.poll() is not None for p in procs):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


# MLflow 3.x's UI opens an experiment on the view of the browser's "workflow type": the `workflowType` query
# parameter of the page, else localStorage['mlflow.workflowType_v1'] (set by the sidebar's GenAI / Model
# training switch), else "genai", whose landing page is an empty Traces overview. The experiment tag
# mlflow.experimentKind is not read for it. So the UI `study ui` serves makes "Model training" the default
# of a browser that has not chosen: one line in the page's <head>; the switch still works and is remembered.
WORKFLOW_KEY = "mlflow.workflowType_v1"
WORKFLOW_DEFAULT = (f"<script>try{{if(localStorage.getItem('{WORKFLOW_KEY}')===null)localStorage.setItem("
                    f"'{WORKFLOW_KEY}','\"machine_learning\"')}}catch(e){{}}</script>").encode()
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
              "trailer", "transfer-encoding", "upgrade"}


LIVE = "/study/{name}/live"  # the live landscape of a study (report.live_html), served by the proxy itself
REPORT = "/study/{name}/report"  # the report `study run` exported into the home, served from the MLflow UI's origin
PAGES = ("live", "report")     # so that its cells' links to setting runs open in this UI


def _page(tracking: str, home: Path | None, path: str) -> tuple[int, bytes]:
    """(status, page) for GET /study/NAME/live (the study's landscape as it stands) or /study/NAME/report (the
    exported report.html in the home), or one line saying why not."""
    parts = path.split("?")[0].strip("/").split("/")
    name = urllib.parse.unquote(parts[1]) if len(parts) == 3 else ""
    what = "live landscape" if parts[-1] == "live" else "report"
    try:
        if parts[-1] == "live":
            from .report import live_html

            return 200, live_html(tracking, check_name(name)).encode()
        report = (home / check_name(name) / "export" / "report.html") if home is not None else None
        if report is None or not report.is_file():
            return 404, (f"no report of study {name!r} in this home yet: `study run` exports it when the study "
                         f"finishes (`study resume {name}` finishes one that stopped; `study export {name} --out "
                         f"{home / name / 'export'}` writes it again)").encode()
        return 200, report.read_bytes()
    except (LookupError, SpecError) as e:
        return 404, f"{e}".strip("'\"").encode()
    except Exception as e:  # the page says what failed; the UI goes on serving
        return 500, f"the {what} of {name!r} could not be read ({type(e).__name__}: {e})".encode()


def _ui_proxy(host: str, port: int, upstream_port: int, tracking: str = "", home: Path | None = None):
    """A threaded HTTP server on host:port passing every request to the MLflow server on 127.0.0.1:upstream_port
    unchanged (Host and Origin headers included, so MLflow's own host and CORS checks see what the browser sent),
    except the app's page itself, which gets WORKFLOW_DEFAULT, and the LIVE and REPORT pages, which it makes itself
    from the `tracking` store and the `home`. Each response ends its connection."""
    import http.client
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):  # no access log on the terminal
            pass

        def _forward(self):
            if self.command == "GET" and self.path.startswith("/study/") and self.path.split("?")[0].rsplit("/", 1)[-1] in PAGES:
                status, data = _page(tracking, home, self.path)
                self.send_response(status)
                self.send_header("Content-Type", f"text/{'html' if status == 200 else 'plain'}; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True
                return
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else None
            page = self.command == "GET" and self.path.split("?")[0] in ("/", "/index.html")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP
                       and not (page and k.lower() == "accept-encoding")}  # the page as plain text, to add a line
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=600)
            try:
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                except OSError:
                    self.send_error(502, "the MLflow server does not answer (yet)")
                    return
                page = page and resp.getheader("Content-Type", "").startswith("text/html")
                data = resp.read().replace(b"<head>", b"<head>" + WORKFLOW_DEFAULT, 1) if page else None
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP and not (page and k.lower() == "content-length"):
                        self.send_header(k, v)
                if page:
                    self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                if page:
                    self.wfile.write(data)
                elif self.command != "HEAD":
                    while chunk := resp.read1(1 << 16):  # streamed: artifacts, long metric histories
                        self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the browser went away
            finally:
                conn.close()
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _forward

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    return Server((host, port), Handler)


VIEWS = (("study-members", "members, best first"), ("study-settings", "settings, mean over seeds, best first"))


def _experiment_urls(base: str) -> list[tuple[str, str | None, str, list[tuple[str, str]]]]:
    """(name, its study's name, URL of its runs table, [(what, URL)] of the views that open on the question) of each study's
    experiment the server lists (all of them if none is a study's), read through the UI's own address with MLflow's
    REST API. The views are the experiment's shared views the driver wrote (tracking.question_views)."""
    import urllib.request

    req = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search", method="POST",
                                 data=json.dumps({"max_results": 1000, "view_type": "ACTIVE_ONLY"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        exps = json.load(r).get("experiments", [])
    studies = [e for e in exps if any(t.get("key") == "study" for t in e.get("tags", []))] or exps
    out = []
    for e in sorted(studies, key=lambda e: e["name"]):
        page = f"{base}/#/experiments/{e['experiment_id']}/runs?workflowType=machine_learning"
        keys = {t["key"][len(VIEW_TAG):] for t in e.get("tags", []) if t.get("key", "").startswith(VIEW_TAG)}
        views = [(what, f"{page}&viewStateShareKey={key}") for key, what in VIEWS if key in keys]
        views += [(f"landscape of {key[len('study-landscape-'):]}, a contour of its settings",
                   f"{page}&viewStateShareKey={key}&compareRunsMode=CHART")
                  for key in sorted(keys) if key.startswith("study-landscape-")]
        study = next((t["value"] for t in e.get("tags", []) if t.get("key") == "study"), None)
        if study and keys:  # a study's experiment (the views are ours): its landscape as it stands, while it runs too
            views.append(("live landscape", f"{base}{LIVE.format(name=urllib.parse.quote(study))}"))
        out.append((e["name"], study, page, views))
    return out


def cmd_ui(args) -> int:
    """The MLflow UI (and optuna-dashboard) as child process groups behind a small proxy on --port (see
    WORKFLOW_DEFAULT); SIGINT and SIGTERM stop every process."""
    import shutil
    import signal
    import subprocess
    import tempfile
    import threading

    from .stores import check_mlflow_file, check_optuna_url, check_tracking_uri, sqlite_path

    home = home_dir(args)
    tracking = tracking_uri(args, home)
    db = sqlite_path(tracking)
    source = "--tracking-uri" if args.tracking_uri else home_source(args)
    if db is not None and db.exists() and not db.is_file():
        raise SpecError(f"invalid {source}: no MLflow store in {tracking} ({why_no_file(db)})")
    if db is not None and not (db.is_file() and check_mlflow_file(db)):
        raise SpecError(f"invalid {source}: no studies are recorded in {tracking} yet; start one with `study run`")
    if db is None:
        check_tracking_uri(tracking)  # a server or database that answers, before a UI is started on it
    # what --study and --storage ask for, checked before anything is bound, read or written
    dash = None
    if args.storage and not args.study:
        raise SpecError(f"invalid --storage: it is the Optuna storage of --study, and no --study was given; add "
                        f"--study NAME, but got storage={masked(args.storage)!r}")
    if args.study:  # installed beside this Python (a venv not on PATH), or on PATH
        beside = Path(sys.executable).with_name("optuna-dashboard")
        dash = str(beside) if beside.is_file() else shutil.which("optuna-dashboard")
    storage = args.storage or (default_storage(home, check_name(args.study)) if args.study else None)
    if args.storage:
        check_optuna_url(args.storage, writing=False)  # a URL optuna-dashboard can open, not one it dies on after the UI started
        if "://" not in args.storage and not Path(args.storage).expanduser().is_file():
            raise SpecError(f"invalid --storage: no Optuna journal file at {args.storage}, but got "
                            f"storage={masked(args.storage)!r}")
    if storage is not None and sqlite_path(storage) is not None and not sqlite_path(storage).is_file():
        raise SpecError(f"invalid --study: no Optuna storage for study {args.study!r} at {sqlite_path(storage)} "
                        f"(`study list` names the studies; --storage gives another), but got study={args.study!r}")
    _check_port(args.host, args.port)
    if db is not None:  # a moved or copied home shows its own figures (MLflow records absolute locations)
        from .stores import StoreError
        from .tracking import adopt_home
        try:
            adopt_home(tracking)
        except StoreError as e:
            print(f"warning: {e}", file=sys.stderr)
    if args.study and not dash:
        print(f"warning: --study {args.study}: optuna-dashboard is not installed (pip install optuna-dashboard); "
              f"serving MLflow only", file=sys.stderr)
    if dash:
        _check_port(args.host, args.port + 1, "--port (+1, optuna-dashboard)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who reaches this address can read and change the "
              f"records; MLflow has no login here. Prefer 127.0.0.1 with an SSH tunnel.", file=sys.stderr)
    with socket.socket() as s:  # the MLflow server itself listens on loopback only, behind the proxy
        s.bind(("127.0.0.1", 0))
        inner = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking, "--host", "127.0.0.1",
           "--port", str(inner), "--workers", "1"]
    if db is not None:
        cmd += ["--default-artifact-root", (home / "artifacts").as_uri()]
    try:
        proxy = _ui_proxy(args.host, args.port, inner, tracking, home)
    except OSError as e:
        raise SpecError(f"invalid --port: {args.host}:{args.port} is not free ({e.strerror}); choose another port") \
            from None
    stopping: list[int] = []  # the signal handler only records the signal; the main loop stops the servers
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))
    # each server in its own process group, so stopping it stops its workers too (mlflow server forks ~9)
    log = tempfile.TemporaryFile()  # the server's own log: shown only if it fails to come up
    # MLflow's job runner (a queue of worker processes for GenAI evaluation jobs) serves nothing a study records:
    # off unless the user turned it on: 3 processes and 0.66 GB instead of 11 and 1.37 GB (bench/README.md)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    procs = [subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT, env=env)]
    if dash:
        procs.append(subprocess.Popen([dash, storage, "--host", args.host, "--port", str(args.port + 1)],
                                      start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    serving = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    serving.start()
    base = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{args.port}"
    print(f"starting the MLflow UI on {base} (store {tracking}) …", file=sys.stderr, flush=True)
    try:
        if not _wait_answering(f"{base}/health", procs[:1], stopping):
            if stopping:
                return 0
            log.seek(0)
            err = log.read().decode(errors="replace").strip().splitlines()
            print(f"study: error: the MLflow server did not come up ({(err or ['no answer in 180 s'])[-1][:200]})",
                  file=sys.stderr)
            return 1
        try:
            runs = _experiment_urls(base)
        except (OSError, ValueError, KeyError) as e:
            runs = []
            print(f"warning: could not list the experiments ({type(e).__name__}: {e})", file=sys.stderr)
        print(f"MLflow UI: {base}/  (store {tracking}); Ctrl-C stops it", flush=True)
        for name, study, url, views in runs:
            print(f"  {name}: {url}", flush=True)
            for what, view in views:
                print(f"    {what}: {view}", flush=True)
            # what `study run` exported when it finished, in the study's folder (named after the study, which
            # tracking.experiment may name differently)
            report = home / (study or name) / "export" / "report.html"
            if report.is_file():  # served here, its cells open their setting runs; the file itself works offline
                print(f"    report: {base}{REPORT.format(name=urllib.parse.quote(study or name))}  "
                      f"(file {report.as_uri()})", flush=True)
        if dash:
            from .search import dashboard_studies

            board = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{args.port + 1}"
            print(f"optuna-dashboard: {board}  (storage {masked(storage)})", flush=True)
            try:
                listed = dashboard_studies(storage, args.study)
                for study, study_id in listed:
                    what = "settings, mean over seeds" if study.endswith(".settings") else "members"
                    print(f"    {study} ({what}): {board}/dashboard/studies/{study_id}", flush=True)
                if sum(s.endswith(".settings") for s, _ in listed) < sum(not s.endswith(".settings") for s, _ in listed):
                    print(f"    (an arm's settings study, {args.study}.ARM.settings, appears on the dashboard's home "
                          f"page once one of its settings has all its seeds in)", flush=True)
            except Exception as e:  # the dashboard still serves; only the addresses are missing
                print(f"warning: could not list the Optuna studies ({type(e).__name__}: {e})", file=sys.stderr)
        while not stopping and procs[0].poll() is None:
            time.sleep(0.2)
        return 0
    finally:
        proxy.shutdown()
        proxy.server_close()
        _stop_tree(procs)


def _stop_tree(procs) -> None:
    """SIGTERM to each server's process group, SIGKILL to what is left after 20 s: nothing stays listening."""
    import signal
    import subprocess

    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # workers that outlived their parent, too
        except ProcessLookupError:
            pass
        p.wait()


# --------------------------------------------------------------------------- study export
