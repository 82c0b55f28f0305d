"""The operator's image installs the project's core dependencies only, no extras.

So every module of `z2m` must import nothing beyond them and the standard library:
an import of an extra passes every test in the venv and fails only in the image.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "z2m"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def core_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_normal(re.split(r"[\[<>=!~;\s]", d, maxsplit=1)[0]) for d in project["dependencies"]}


def imported_modules() -> dict[str, set[str]]:
    """Top-level module -> the z2m files that import it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.name)
    return found


def test_the_operator_imports_only_its_core_dependencies_and_the_standard_library() -> None:
    core = core_dependencies()
    providers = importlib.metadata.packages_distributions()
    outside = {
        module: sorted(files)
        for module, files in imported_modules().items()
        if module != "z2m"
        and module not in sys.stdlib_module_names
        and not {_normal(d) for d in providers.get(module, [])} & core
    }
    assert not outside, f"imported by the operator but not in [project] dependencies: {outside}"


def test_the_check_sees_an_import_of_an_extra() -> None:
    # psycopg is the app's (and the shard move's): were it only an extra, the test above
    # would name it. The scan itself must find it.
    assert "psycopg" in imported_modules()
    assert "kopf" in core_dependencies() and "prometheus-client" in core_dependencies()
