"""Meta-tests that keep the house honest: a registry name leads to its file, the kernel stays
small, no import cycles, plugins stand alone, jobs read as sequences of stages, and every package
folder is installed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

from ipfacediff.catalog import get_catalog
from ipfacediff.interfaces import KINDS

ROOT = Path(__file__).resolve().parent.parent
KERNEL = ["__init__.py", "interfaces.py", "hookspecs.py", "catalog.py", "registry.py", "params.py", "errors.py"]
# physical lines as ruff formats them (no packing possible: the format is checked). 0.3.0's kernel was
# 1500 packed lines, 1701 formatted; 0.4 adds the catalog's guard for failing plugins (+41) and
# EditRun's methods, and derives the kinds' tables instead of listing them (-13): 1740
KERNEL_MAX_LINES = 1800


def _modules() -> dict[str, Path]:
    """Every module of the distribution: dotted name -> file (core/ is ipfacediff, plugins/ ipfacediff.plugins)."""
    out = {}
    for base, pkg in ((ROOT / "core", "ipfacediff"), (ROOT / "plugins", "ipfacediff.plugins")):
        for f in base.rglob("*.py"):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = f
    return out


def _imports(name: str, path: Path) -> set[str]:
    """ipfacediff modules ``name`` imports, at module level or inside functions."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    mods = _modules()
    return {m for m in found if m in mods and m != name}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_builtin_is_in_plugins_kind_name_file(kind):
    for name in get_catalog().names(kind):
        spec = get_catalog().get(kind, name)
        if spec.plugin.startswith("ipfacediff."):
            want = f"ipfacediff.plugins.{KINDS[kind]}.{name.replace('-', '_')}"
            assert spec.cls.__module__ == want, f"{kind} {name!r} is defined in {spec.cls.__module__}, expected {want}"
            assert spec.plugin == want, f"{kind} {name!r} is registered by {spec.plugin}, expected its own file {want}"


def _is_plugin(module: str) -> bool:
    """A built-in plugin module: ``ipfacediff.plugins.<kind>.<name>`` (``_name``: a folder's helper)."""
    return module.startswith("ipfacediff.plugins.") and module.count(".") == 3 and not module.split(".")[-1][0] == "_"


def test_default_plugins_are_exactly_the_files_under_plugins():
    from ipfacediff.plugins import DEFAULT_PLUGINS

    files = {m for m in _modules() if _is_plugin(m)}
    assert set(DEFAULT_PLUGINS) == files
    folders = {p.name for p in (ROOT / "plugins").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(KINDS.values()), "every folder under plugins/ is a kind's (its plural)"


def test_helpers_of_a_plugin_folder_serve_that_folder_only():
    """A ``plugins/<kind>/_helper.py`` is imported by plugins of its own folder and nothing else."""
    mods = _modules()
    for name, path in mods.items():
        for m in _imports(name, path):
            if m.startswith("ipfacediff.plugins.") and m.count(".") == 3 and not _is_plugin(m):
                assert name.rsplit(".", 1)[0] == m.rsplit(".", 1)[0], f"{name} imports {m}, a helper of another folder"


def test_kernel_stays_small():
    lines = {f: len((ROOT / "core" / f).read_text().splitlines()) for f in KERNEL}
    print("kernel lines:", lines, "total", sum(lines.values()))
    assert sum(lines.values()) <= KERNEL_MAX_LINES, lines


def test_kernel_imports_no_runtime_job_or_plugin():
    mods = _modules()
    for f in KERNEL:
        name = "ipfacediff" if f == "__init__.py" else f"ipfacediff.{f[:-3]}"
        bad = {
            m
            for m in _imports(name, mods[name])
            if m.startswith(("ipfacediff.runtime", "ipfacediff.jobs", "ipfacediff.plugins."))
        }
        assert not bad, f"{f} imports {bad}"


def test_no_import_cycles():
    mods = _modules()
    # the root package only re-exports (hookimpl, __version__): importing it is no edge
    graph = {m: _imports(m, p) - {"ipfacediff"} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError(
                    "import cycle: " + " -> ".join(path[path.index(n) :] + [n]) if n in path else f"{m} -> {n}"
                )
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_plugins_import_no_other_plugin_and_never_look_up_the_catalog():
    mods = _modules()
    for name, path in mods.items():
        if _is_plugin(name):
            others = {m for m in _imports(name, path) if _is_plugin(m)}
            assert not others, f"{name} imports the plugin(s) {others}: pass what it needs in (Component.component)"
            assert "get_catalog" not in path.read_text(), f"{name} looks up the catalog itself"


MAX_STAGE_STATEMENTS = 50  # 0.3.0's longest job function had 50 (60 packed lines); the formatter now sets the lines


def test_jobs_are_sequences_of_short_stages():
    """Counted in statements, not lines: how the formatter wraps a call says nothing of a stage's length."""
    long = []
    for f in (ROOT / "core" / "jobs").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = sum(isinstance(x, ast.stmt) for x in ast.walk(node)) - 1
                if n > MAX_STAGE_STATEMENTS:
                    long.append(f"{f.relative_to(ROOT)}:{node.name} ({n} statements)")
    assert not long, long


def test_every_package_folder_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {m for m, p in _modules().items() if p.name == "__init__.py"}
    assert folders == listed, (
        f"not in pyproject's packages: {folders - listed}; listed but missing: {listed - folders}"
    )
