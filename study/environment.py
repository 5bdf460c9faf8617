"""What a study's numbers depend on besides its spec: package versions, the device, the determinism settings.

`versions()` reads installed package metadata (nothing is imported); `device_info()` asks torch about the
device a trainer uses. The driver tags the parent run with both (`env.*`), the report and `study list`
show them, and `study resume` warns when the versions differ from those the study started with.
Imports no Ray, Optuna or MLflow.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata

PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "ray", "optuna", "mlflow")


class SettingError(ValueError):
    """An environment variable the study reads holds a value it cannot use; str(e) names the variable."""


# the environment variables that tune the study (all optional): name -> (default seconds, what it sets, the least
# value that makes sense: a log interval of 0 writes every epoch at once; a server or Ray given less than a tenth of
# a second to answer could never be ready, so 1e-320 is refused rather than read as "no patience")
SECONDS = {"STUDY_LOG_INTERVAL_S": (10.0, "seconds between the driver's batched metric writes", 0.0),
           "STUDY_STORE_CHECK_S": (30.0, "seconds a tracking server may take to answer", 0.1),
           "STUDY_RAY_START_S": (600.0, "seconds Ray may take to start or join a cluster", 0.1)}


def seconds(name: str) -> float:
    """The value of one of SECONDS: a finite number in [its least value, 86400], or SettingError naming the
    variable."""
    import math

    default, what, low = SECONDS[name]
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and low <= v <= 86400):
        raise SettingError(f"invalid {name}: {what}, a number in [{low:g}, 86400], "
                           f"but got {name}={raw[:40]!r}")
    return v


# folders the study reads from the environment: name -> what it is and its default when unset
FOLDERS = {"STUDY_HOME": "the studies' home (default ~/studies)",
           "STUDY_CACHE": "the decoded datasets' cache (default ~/.cache/study)",
           "RAY_TMPDIR": "the temporary folder of a local Ray (default /tmp)",
           "STUDY_TEST_FAIL_WHILE": "a file whose existence makes trials fail (a test hook)"}


def check_settings() -> None:
    """Every environment setting read at once, before a command starts (a bad one is one line, not a traceback
    inside a Ray worker an hour later). A folder variable set to nothing (`STUDY_HOME=$TYPO`) is refused, not
    read as unset."""
    for name in SECONDS:
        seconds(name)
    for name, what in FOLDERS.items():
        if name in os.environ and not os.environ[name].strip():
            raise SettingError(f"invalid {name}: {what}, but it is set to {os.environ[name]!r}; unset it for the default")
    slow = os.environ.get("STUDY_TEST_SLOW_EPOCH_S")  # the tests' fault hooks, read inside trials: checked here
    try:
        if slow is not None and not 0 <= float(slow) < 3600:
            raise ValueError
    except ValueError:
        raise SettingError(f"invalid STUDY_TEST_SLOW_EPOCH_S: seconds in [0, 3600), but it is set to {slow!r}") from None
    crash = os.environ.get("STUDY_TEST_CRASH_AT_EPOCH")
    if crash is not None and not re.fullmatch(r"[0-9]+:.+", crash):
        raise SettingError(f"invalid STUDY_TEST_CRASH_AT_EPOCH: EPOCH:MARKER_FILE, but it is set to {crash!r}")


def versions() -> dict[str, str]:
    """python and each package of PACKAGES: its installed version, or 'absent'."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_info(device=None) -> dict[str, str]:
    """The device a trainer runs on and the settings that change its rounding: CPU model and the kernels
    torch dispatches to (its CPU capability, ATEN_CPU_CAPABILITY / DNNL_MAX_CPU_ISA where set), threads,
    and for CUDA the GPU's name, CUDA and cuDNN versions, cuDNN's benchmark and deterministic switches."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    out = {"device": str(dev), "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "threads": str(torch.get_num_threads()),
           "deterministic_algorithms": str(torch.are_deterministic_algorithms_enabled()).lower()}
    for var in ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA"):
        if os.environ.get(var):
            out[var.lower()] = os.environ[var]
    if dev.type == "cuda":
        out.update(gpu=torch.cuda.get_device_name(dev), cuda=str(torch.version.cuda),
                   cudnn=str(torch.backends.cudnn.version()),
                   cudnn_benchmark=str(torch.backends.cudnn.benchmark).lower(),
                   cudnn_deterministic=str(torch.backends.cudnn.deterministic).lower())
    return out


def version_tags(prefix: str = "env.") -> dict[str, str]:
    return {f"{prefix}{k}": v for k, v in versions().items()}


def version_changes(recorded: dict[str, str], prefix: str = "env.") -> list[str]:
    """'torch 2.14.1 → 2.15.0' for every version recorded under `prefix` that differs from the installed one."""
    now = versions()
    out = []
    for name, v in now.items():
        old = recorded.get(f"{prefix}{name}")
        if old is not None and old != v:
            out.append(f"{name} {old} → {v}")
    return out
