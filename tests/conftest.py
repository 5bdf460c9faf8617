import os
from pathlib import Path

import pytest

# Every test's traffic stays on 127.0.0.1; throwaway Ray clusters run without token authentication.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

ROOT = Path(__file__).resolve().parents[1]
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
