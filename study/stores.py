"""Where a study's records live, checked before anything is written, and created so readers never race.

Owns the store URLs' rules (schemes, absolute paths, reachability, writability) and the atomic creation
of SQLite files. Imports no MLflow, Optuna, Ray or torch: tracking.py and search.py pass in the
function that builds their schema. A reader (`study ui`, optuna-dashboard, `mlflow.search_runs`) that
opens a store while the driver creates it would otherwise run the same schema migrations at the same
time; here the schema is built in a private file and linked into place only once it is complete.
"""

from __future__ import annotations

import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .environment import seconds

SQL_SCHEMES = ("sqlite", "postgresql", "mysql")
TRACKING_SCHEMES = (*SQL_SCHEMES, "http", "https")


class StoreError(ValueError):
    """A store URL or location is unusable; str(e) is one line naming the flag and the value."""


def default_tracking_uri(home: Path) -> str:
    """The MLflow store under a studies' home: absolute, since Ray runs trials in their own folders."""
    return f"sqlite:///{home / 'mlflow.db'}"


# the experiment tag prefix of MLflow's shared views (its UI's Share button writes them): tracking.question_views
VIEW_TAG = "mlflow.sharedViewState."


def default_storage(home: Path, name: str) -> str:
    """A study's Optuna storage under the studies' home."""
    return f"sqlite:///{home / name / 'optuna.db'}"


def masked(url: str) -> str:
    """A store URL fit to print or record: its password replaced by ***."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL, None for other URLs."""
    if _scheme(url) != "sqlite":
        return None
    path = url.split("://", 1)[1]
    return Path(path[1:]) if path.startswith("/") else Path(path)


def why_no_file(path: Path) -> str:
    """Why a SQLite store's path holds no store, for a message: missing, or something else in its place."""
    if path.is_dir():
        return f"{path} is a folder, not a database file; move it away"
    return "the file does not exist" if not path.exists() else f"{path} is not a regular file"


def _check_sqlite(flag: str, url: str, writing: bool = True) -> Path:
    if "?" in url.split("://", 1)[-1]:  # the file is created whole under a temporary name: no options to carry
        raise StoreError(f"invalid {flag}: a SQLite store is named by its path alone; options after '?' are not "
                         f"supported, but got {flag.lstrip('-')}={masked(url)!r}")
    path = sqlite_path(url)
    if path is None or not str(path) or not path.is_absolute():
        raise StoreError(f"invalid {flag}: a SQLite store needs an absolute path (sqlite:////abs/path/file.db; "
                         f"Ray runs trials in other folders), but got {flag.lstrip('-')}={url!r}")
    if path.is_dir():
        raise StoreError(f"invalid {flag}: {path} is a folder, not a database file")
    folder = path.parent  # checked, not created: a refused command leaves nothing behind
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise StoreError(f"invalid {flag}: {folder} is a file, so {path.parent} cannot be a folder")
    if writing and (not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK))):
        raise StoreError(f"invalid {flag}: {path if path.exists() else folder} is not writable")
    return path


def _check_reachable(flag: str, url: str) -> None:
    """A database server answers on its port (SQLAlchemy URLs with a host)."""
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname, parsed.port or {"postgresql": 5432, "mysql": 3306}.get(_scheme(url))
    if not host:
        return  # a local socket: the driver's connection will tell
    try:
        with socket.create_connection((host, port), timeout=10):
            pass
    except OSError as e:
        raise StoreError(f"invalid {flag}: no database answers at {host}:{port} ({e.strerror or e})") from None


def check_optuna_url(url: str, writing: bool = True) -> None:
    """--storage: a SQLAlchemy URL (sqlite, postgresql, mysql) or a journal file path (.log, .journal); a store
    only read (`writing` False: list, ui) need not be writable."""
    if "://" not in url:
        if not url.endswith((".log", ".journal")):
            raise StoreError(f"invalid --storage: expected a SQLAlchemy URL ({', '.join(s + '://…' for s in SQL_SCHEMES)}) "
                             f"or a journal file ending .log or .journal, but got storage={url!r}")
        path = Path(url).expanduser().resolve()
        _check_sqlite("--storage", f"sqlite:///{path}", writing)  # the same folder and file checks
        return
    if _scheme(url) not in SQL_SCHEMES:
        raise StoreError(f"invalid --storage: scheme {_scheme(url)!r} is not one of {', '.join(SQL_SCHEMES)} "
                         f"(or a journal file path), in storage={url!r}")
    if _scheme(url) == "sqlite":
        _check_sqlite("--storage", url, writing)
    else:
        _check_reachable("--storage", url)


def check_tracking_uri(uri: str) -> None:
    """--tracking-uri: sqlite:///ABS, postgresql://, mysql:// or an MLflow server http(s)://HOST:PORT
    (which must answer /health within 30 s). MLflow 3.17 has no file store: file:// and paths are refused."""
    scheme = _scheme(uri)
    if "://" in uri:
        try:   # a malformed host or port is one line here, not a traceback from the client later
            parsed = urllib.parse.urlsplit(uri)
            parsed.port
        except ValueError as e:
            raise StoreError(f"invalid --tracking-uri: {e}, in tracking_uri={uri[:80]!r}") from None
        if scheme in TRACKING_SCHEMES and scheme != "sqlite" and not parsed.hostname:
            raise StoreError(f"invalid --tracking-uri: no host, in tracking_uri={uri[:80]!r}")
        if parsed.fragment or (scheme in ("http", "https") and parsed.query):  # MLflow would drop or mangle them
            part = "fragment ('#…')" if parsed.fragment else "query ('?…')"  # either may hold a token: not echoed
            raise StoreError(f"invalid --tracking-uri: a {part} means nothing to MLflow; leave it out, in "
                             f"tracking_uri={masked(uri.split('#')[0].split('?')[0])[:80]!r}")
    if scheme not in TRACKING_SCHEMES:
        hint = " (MLflow's file store is disabled; use sqlite:////abs/path/mlflow.db)" if scheme in ("", "file") else ""
        raise StoreError(f"invalid --tracking-uri: scheme {scheme or 'none'!r} is not one of "
                         f"{', '.join(TRACKING_SCHEMES)}{hint}, in tracking_uri={uri!r}")
    if scheme == "sqlite":
        _check_sqlite("--tracking-uri", uri)
    elif scheme in ("http", "https"):
        patience = seconds("STUDY_STORE_CHECK_S")
        deadline, last = time.time() + patience, None
        while True:  # asked at least once, however short the patience
            try:
                with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=min(5.0, max(patience, 0.5))) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except (urllib.error.URLError, OSError) as e:
                last = getattr(e, "reason", e)
            if time.time() >= deadline:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.time())))
        raise StoreError(f"invalid --tracking-uri: no MLflow server answers at {uri} within {patience:g} s ({last})")
    else:
        _check_reachable("--tracking-uri", uri)


SQLITE_HEADER = b"SQLite format 3\x00"


def check_mlflow_file(path: Path, flag: str = "--tracking-uri") -> bool:
    """An existing file named as MLflow's SQLite store must be one: SQLite, with MLflow's tables. Checked
    read-only, before MLflow opens it (MLflow runs its schema setup into whatever file it is given, so a reader
    would write a user's own database full of tables). Returns False for an empty file (no records yet): a
    writer may fill it, a reader has nothing to read. Raises StoreError naming the file otherwise."""
    import sqlite3

    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as e:
        raise StoreError(f"invalid {flag}: cannot read {path} ({e.strerror})") from None
    if not head:
        return False
    if head != SQLITE_HEADER:
        raise StoreError(f"invalid {flag}: {path} is not an SQLite database (it starts {head[:8]!r}); "
                         f"name MLflow's store or move the file away")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for t in ("experiments", "runs"):   # the tables every command reads first, and their indexes
                if t in tables:
                    found = con.execute(f"PRAGMA quick_check('{t}')").fetchone()[0]
                    if found != "ok":
                        raise sqlite3.DatabaseError(f"table {t}: {found}")
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"invalid {flag}: {path} cannot be read as an SQLite database ({e}); "
                         f"restore it from a copy or move it away") from None
    if not tables:
        return False
    if not {"experiments", "runs", "alembic_version"} <= tables:
        shown = ", ".join(sorted(tables)[:4]) + (", …" if len(tables) > 4 else "")
        raise StoreError(f"invalid {flag}: {path} is an SQLite database without MLflow's tables (it holds {shown}); "
                         f"name MLflow's store, not another database")
    return True


def create_sqlite_atomically(url: str, build: Callable[[str], None]) -> None:
    """Make sure the SQLite file of `url` exists with its full schema. `build(tmp_url)` creates the schema in
    a private file, which is linked into place in one step; a concurrent creator's file wins. (Write-ahead
    logging was tried and left out: MLflow's store was found malformed after a second driver process
    resumed a study under concurrent readers.)"""
    path = sqlite_path(url)
    if path is None or path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"invalid store: cannot create the folder {path.parent} ({e.strerror})") from None
    tmp = path.with_name(f".{path.name}.init-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        build(f"sqlite:///{tmp}")
        try:
            os.link(tmp, path)  # atomic, and never replaces a file another process made meanwhile
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


class StoreWatch:
    """Notices a SQLite store deleted, moved or replaced while a study runs. SQLite keeps writing an open,
    deleted file (the records then vanish with the process) and a new connection would start an empty store,
    so the driver asks `lost()` before it writes and stops with one line instead. Server stores have no file
    to watch; their outages are retried (tracking._retry) or stop the study with the server's error."""

    def __init__(self, stores: dict[str, str]):  # label -> URL
        self.files = {}
        for label, url in stores.items():
            path = sqlite_path(url)
            if path is not None:
                st = path.stat()
                self.files[label] = (path, (st.st_dev, st.st_ino))

    def lost(self) -> tuple[str, str] | None:
        """(label, one line) for the first store whose file is gone or is another file now; None if all are."""
        for label, (path, ident) in self.files.items():
            try:
                st = path.stat()
            except FileNotFoundError:
                return label, f"the {label} {path} was deleted or moved during the run"
            if (st.st_dev, st.st_ino) != ident:
                return label, f"the {label} {path} was replaced by another file during the run"
        return None


def database_damage(e: BaseException) -> str | None:
    """SQLite's own complaint when `e` (or what it wraps) says a store file is damaged ("file is not a
    database", "database disk image is malformed"): damage in pages the up-front check
    (stores.check_mlflow_file) does not read. Operational errors (locks, races, a full disk) are not damage
    and stay as they are."""
    import sqlite3

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        orig = getattr(e, "orig", None)   # SQLAlchemy wraps the driver's exception
        for x in (e, orig):
            if isinstance(x, sqlite3.DatabaseError) and not isinstance(x, sqlite3.OperationalError):
                return str(x).splitlines()[0][:200]
        e = e.__cause__ or e.__context__
    return None
