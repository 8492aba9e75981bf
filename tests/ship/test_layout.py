"""The tree's structure as issue 16 settled it: arrows point down to core/, the entry points
exist and answer, no module grows past 400 lines, and lint is part of CI."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
PACKAGES = ("core", "server", "trainer", "exporter", "loadtest", "bench", "demo")
MAX_MODULE_LINES = 400


def imported_packages(path: Path) -> set[str]:
    """First-party packages a module imports (at any depth: lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize(
    "package,allowed",
    [
        ("core", {"core"}),
        ("server", {"core", "server"}),
        # The exporter's parity gate reads the trainer's validation split when the trainer is installed.
        ("exporter", {"core", "exporter", "trainer"}),
        ("trainer", {"core", "trainer"}),
    ],
)
def test_arrows_point_down(package, allowed):
    wrong = {str(p.relative_to(REPO)): sorted(imported_packages(p) - allowed) for p in modules(package)}
    assert not {k: v for k, v in wrong.items() if v}, wrong


def test_the_product_never_imports_the_lab():
    for package in ("core", "server", "trainer", "exporter"):
        for path in modules(package):
            assert not imported_packages(path) & {"bench", "demo", "loadtest"}, path


def test_no_module_is_over_the_limit():
    long = {
        str(p.relative_to(REPO)): n
        for package in PACKAGES
        for p in modules(package)
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_entry_point_names_a_main_that_python_m_also_runs(name):
    module_name, _, attr = SCRIPTS[name].partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attr)), SCRIPTS[name]
    # `python -m <package>` runs the same function: the package's __main__ is the entry point's module,
    # or the module itself when it is run directly.
    runnable = module_name.removesuffix(".__main__")
    proc = subprocess.run(
        [sys.executable, "-m", runnable, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in (proc.stdout + proc.stderr).lower()


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="entry points are installed into a virtualenv")
def test_entry_points_are_installed():
    bindir = Path(sys.executable).parent
    missing = [name for name in SCRIPTS if not (bindir / name).is_file()]
    assert not missing, f"reinstall the project (make install): {missing}"
    proc = subprocess.run([str(bindir / "sentiment-serve"), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--latency-budget-ms" in proc.stdout


def test_ci_runs_lint_before_the_tests():
    steps = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert steps.index("make lint") < steps.index("make test")
    makefile = (REPO / "Makefile").read_text()
    for tool in ("ruff check", "ruff format --check", "mypy"):
        assert tool in makefile.split("\nlint:")[1].split("\n\n")[0], tool


def readme_layout() -> dict[str, str]:
    """The README's layout block: top-level folder -> its text (continuation lines joined)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    rows: dict[str, str] = {}
    current = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            current, _, rest = line.partition(" ")
            rows[current] = rest
        else:
            rows[current] += " " + line.strip()
    return rows


def test_readme_layout_matches_the_tree():
    rows = readme_layout()
    folders = {p.name + "/" for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")}
    listed = set(rows)
    assert {f"{p}/" for p in PACKAGES} | {"tests/", "deploy/", "configs/", "docs/"} <= listed
    assert listed <= folders, f"the README lists folders that do not exist: {sorted(listed - folders)}"
    for package in PACKAGES:
        named = {word for word in rows[package + "/"].replace("(", " ").split() if word.endswith(".py")}
        present = {p.name for p in (REPO / package).glob("*.py") if p.name != "__init__.py"}
        assert named == present, (
            f"{package}/: README lacks {sorted(present - named)}, has gone {sorted(named - present)}"
        )
