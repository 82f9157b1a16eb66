"""Meta-tests that keep the house honest: a registry name leads to its file, the kernel stays
small, no import cycles, plugins stand alone, jobs read as sequences of stages, and every package
folder is installed."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from ipfacediff.catalog import get_catalog
from ipfacediff.interfaces import KINDS

ROOT = Path(__file__).resolve().parent.parent
KERNEL = ["__init__.py", "interfaces.py", "hookspecs.py", "catalog.py", "registry.py", "params.py", "errors.py"]
KERNEL_MAX_LINES = 1500  # 1341 in 0.1.0 with 8 kinds; 0.2 adds 2 kinds and the typed strategy / propagator / objective inputs


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


def test_default_plugins_are_exactly_the_files_under_plugins():
    from ipfacediff.plugins import DEFAULT_PLUGINS

    files = {m for m in _modules() if m.startswith("ipfacediff.plugins.") and m.count(".") == 3}
    assert set(DEFAULT_PLUGINS) == files


def test_kernel_stays_small():
    lines = {f: len((ROOT / "core" / f).read_text().splitlines()) for f in KERNEL}
    print("kernel lines:", lines, "total", sum(lines.values()))
    assert sum(lines.values()) <= KERNEL_MAX_LINES, lines


def test_kernel_imports_no_runtime_job_or_plugin():
    mods = _modules()
    for f in KERNEL:
        name = "ipfacediff" if f == "__init__.py" else f"ipfacediff.{f[:-3]}"
        bad = {m for m in _imports(name, mods[name]) if m.startswith(("ipfacediff.runtime", "ipfacediff.jobs", "ipfacediff.plugins."))}
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
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]) if n in path else f"{m} -> {n}")
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_plugins_import_no_other_plugin_and_never_look_up_the_catalog():
    mods = _modules()
    for name, path in mods.items():
        if name.startswith("ipfacediff.plugins.") and name.count(".") == 3:
            others = {m for m in _imports(name, path) if m.startswith("ipfacediff.plugins.") and m.count(".") == 3}
            assert not others, f"{name} imports the plugin(s) {others}: pass what it needs in (Component.component)"
            assert "get_catalog" not in path.read_text(), f"{name} looks up the catalog itself"


def test_jobs_are_sequences_of_short_stages():
    long = []
    for f in (ROOT / "core" / "jobs").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{f.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_every_package_folder_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {m for m, p in _modules().items() if p.name == "__init__.py"}
    assert folders == listed, f"not in pyproject's packages: {folders - listed}; listed but missing: {listed - folders}"
