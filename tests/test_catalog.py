"""Plugin loading: duplicates, broken plugins, IPFACEDIFF_PLUGINS, check_pending."""

import textwrap
from pathlib import Path

import pluggy
import pytest

import ipfacediff
from conftest import run_cli
from ipfacediff import hookspecs
from ipfacediff.catalog import Catalog, PluginInfo
from ipfacediff.errors import DuplicateComponentError, PluginLoadError
from ipfacediff.interfaces import Metric


class _M(Metric):
    def compute(self, source, edited):
        return {"value": 0.0}


class PluginA:
    @ipfacediff.hookimpl
    def register_metrics(self, register):
        register(_M, name="same-name")


class PluginB:
    @ipfacediff.hookimpl
    def register_metrics(self, register):
        register(_M, name="same-name")


class NotAComponent:
    @ipfacediff.hookimpl
    def register_metrics(self, register):
        register(dict, name="bad")


def _pm(*plugins):
    pm = pluggy.PluginManager("ipfacediff")
    pm.add_hookspecs(hookspecs)
    info = {}
    for name, p in plugins:
        pm.register(p, name=name)
        info[name] = PluginInfo(name, name, "0", False)
    return pm, info


def test_duplicate_registration_names_both_plugins():
    pm, info = _pm(("plugin-a", PluginA()), ("plugin-b", PluginB()))
    with pytest.raises(DuplicateComponentError) as e:
        Catalog(pm, info, [])
    msg = str(e.value)
    assert "'same-name'" in msg and "plugin-a" in msg and "plugin-b" in msg


def test_registering_a_non_component_is_named():
    pm, info = _pm(("weird", NotAComponent()))
    with pytest.raises(PluginLoadError, match="weird.*does not derive from ipfacediff.interfaces.Metric"):
        Catalog(pm, info, [])


def test_attribution_and_listing():
    pm, info = _pm(("plugin-a", PluginA()))
    cat = Catalog(pm, info, [])
    assert cat.get("metric", "same-name").plugin == "plugin-a"
    assert info["plugin-a"].components == {"metric": ["same-name"]}


def _fake_dist(site: Path, name: str, module_src: str, ep_name: str) -> None:
    """A minimal installed distribution (dist-info with an entry point) on a sys.path folder."""
    (site / f"{name}.py").write_text(textwrap.dedent(module_src))
    di = site / f"{name}-0.1.dist-info"
    di.mkdir()
    (di / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (di / "entry_points.txt").write_text(f"[ipfacediff]\n{ep_name} = {name}\n")


def test_broken_plugin_is_named_and_others_still_load(tmp_path):
    _fake_dist(tmp_path, "broken_plugin", "raise RuntimeError('boom at import')\n", "broken")
    _fake_dist(tmp_path, "good_plugin", """
        import ipfacediff
        from ipfacediff.interfaces import Metric
        class Zero(Metric):
            def compute(self, source, edited):
                return {"value": 0.0}
        @ipfacediff.hookimpl
        def register_metrics(register):
            register(Zero, name="zero")
        """, "good")
    r = run_cli("plugins", "--json", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    import json

    data = json.loads(r.stdout)
    assert "zero" in [c["name"] for c in data["components"]["metric"]]
    assert any("broken" in p["message"] and "boom at import" in p["message"] for p in data["problems"])
    assert "broken" in r.stderr and "boom at import" in r.stderr

    # IPFACEDIFF_PLUGINS limits third-party plugins: only "broken" allowed -> no "zero", still a warning
    r = run_cli("plugins", "--json", env={"PYTHONPATH": str(tmp_path), "IPFACEDIFF_PLUGINS": "broken"})
    data = json.loads(r.stdout)
    assert "zero" not in [c["name"] for c in data["components"]["metric"]]
    r = run_cli("plugins", "--json", env={"PYTHONPATH": str(tmp_path), "IPFACEDIFF_PLUGINS": ""})
    data = json.loads(r.stdout)
    assert data["problems"] == [] and "zero" not in [c["name"] for c in data["components"]["metric"]]


def test_misspelled_hook_is_caught_by_check_pending(tmp_path):
    _fake_dist(tmp_path, "typo_plugin", """
        import ipfacediff
        @ipfacediff.hookimpl
        def register_metric(register):
            pass
        """, "typo")
    r = run_cli("plugins", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2 and "register_metric" in r.stderr and len(r.stderr.strip().splitlines()) == 1
