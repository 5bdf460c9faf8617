"""The architecture as the code must keep it: each outside system has one adapter module, the config
layer loads no torch, and the CLI answers --help without loading any of them."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "study"
# outside system -> the one module allowed to import it (anywhere in the file, also inside functions)
ADAPTERS = {"ray": {"tune.py"}, "mlflow": {"tracking.py"}, "optuna": {"search.py"}}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("system", sorted(ADAPTERS))
def test_each_outside_system_has_one_adapter(system):
    users = {p.name for p in PACKAGE.glob("*.py") if system in _imports(p)}
    assert users <= ADAPTERS[system], f"{system} imported outside its adapter: {sorted(users - ADAPTERS[system])}"


def _loaded_after(statement: str) -> list[str]:
    code = (f"import sys; {statement}; "
            "print(','.join(m for m in ('torch', 'ray', 'optuna', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return [m for m in out.stdout.strip().split(",") if m]


@pytest.mark.parametrize("module", ["study.spec", "study.registry", "study.datasets", "study.stores", "study.cli",
                                    "study.parser", "study.checks", "study.ui",
                                    "study.progress", "study.landscape"])
def test_config_and_cli_layers_load_no_heavy_dependency(module):
    assert _loaded_after(f"import {module}") == []


def test_help_loads_nothing_heavy():
    assert _loaded_after("from study.cli import build_parser; build_parser().format_help()") == []
