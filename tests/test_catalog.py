"""Plugin loading: duplicates, broken plugins, IPFACEDIFF_PLUGINS, check_pending."""

import json
import re
import textwrap
from pathlib import Path

import pluggy
import pytest
from conftest import run_cli

import ipfacediff
from ipfacediff import hookspecs
from ipfacediff.catalog import Catalog, PluginInfo
from ipfacediff.errors import DuplicateComponentError
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
    cat = Catalog(pm, info, [])
    (problem,) = cat.problems
    assert "'same-name'" in problem.message and "plugin-a" in problem.message and "plugin-b" in problem.message
    # the plugin that registered first keeps the name; the second is the problem
    assert cat.get("metric", "same-name").plugin != problem.plugin


def test_duplicate_registration_by_a_builtin_is_an_error():
    pm, info = _pm(("plugin-a", PluginA()), ("plugin-b", PluginB()))
    for name in info:  # a built-in's failure is ipfacediff's own bug: raised, not hidden
        info[name].builtin = True
    with pytest.raises(DuplicateComponentError):
        Catalog(pm, info, [])


def test_registering_a_non_component_is_named():
    pm, info = _pm(("weird", NotAComponent()))
    (problem,) = Catalog(pm, info, []).problems
    assert re.search("weird.*does not derive from ipfacediff.interfaces.Metric", problem.message)


class HalfRegisters:
    @ipfacediff.hookimpl
    def register_metrics(self, register):
        register(_M, name="first-of-two")
        raise KeyError("the second one")


def test_a_hook_that_raises_is_a_problem_and_its_registrations_are_withdrawn():
    pm, info = _pm(("plugin-a", PluginA()), ("half", HalfRegisters()))
    cat = Catalog(pm, info, [])
    assert [p.plugin for p in cat.problems] == ["half"]
    assert "register_metrics" in cat.problems[0].message and "KeyError" in cat.problems[0].message
    assert "first-of-two" not in cat.names("metric") and "same-name" in cat.names("metric")
    assert info["half"].components.get("metric", []) == []


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
    _fake_dist(
        tmp_path,
        "good_plugin",
        """
        import ipfacediff
        from ipfacediff.interfaces import Metric
        class Zero(Metric):
            def compute(self, source, edited):
                return {"value": 0.0}
        @ipfacediff.hookimpl
        def register_metrics(register):
            register(Zero, name="zero")
        """,
        "good",
    )
    # IPFACEDIFF_PLUGINS unset (None: removed from the environment): every installed plugin loads
    r = run_cli("plugins", "--json", env={"PYTHONPATH": str(tmp_path), "IPFACEDIFF_PLUGINS": None})
    assert r.returncode == 0, r.stderr
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
    _fake_dist(
        tmp_path,
        "typo_plugin",
        """
        import ipfacediff
        @ipfacediff.hookimpl
        def register_metric(register):
            pass
        """,
        "typo",
    )
    r = run_cli("plugins", env={"PYTHONPATH": str(tmp_path), "IPFACEDIFF_PLUGINS": None})
    assert r.returncode == 2 and "register_metric" in r.stderr and len(r.stderr.strip().splitlines()) == 1


BROKEN_AT_REGISTER = """
import ipfacediff
@ipfacediff.hookimpl
def register_metrics(register):
    raise RuntimeError("boom in register")
"""

BROKEN_CONSTRUCTOR = """
import ipfacediff
from ipfacediff.interfaces import Propagator
class Fragile(Propagator):
    space = "pixels"
    def __init__(self, params=None):
        raise OSError("no such weights file")
    def propagate(self, inp):
        return inp.source_pixels
@ipfacediff.hookimpl
def register_propagators(register):
    register(Fragile, name="fragile")
"""


def test_a_plugin_that_fails_is_one_line_not_an_outage(tmp_path, sample_clip):
    """A third-party plugin raising inside its register hook, another whose component's constructor
    raises: `plugins` lists both problems, every other command still works, and using the fragile
    component is one line naming its plugin (exit 2). Installed on a temporary PYTHONPATH only."""
    _fake_dist(tmp_path, "boom_plugin", BROKEN_AT_REGISTER, "boom")
    _fake_dist(tmp_path, "fragile_plugin", BROKEN_CONSTRUCTOR, "fragile")
    env = {"PYTHONPATH": str(tmp_path), "IPFACEDIFF_PLUGINS": None}
    r = run_cli("plugins", "--json", env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert any(p["plugin"] == "boom" and "boom in register" in p["message"] for p in data["problems"])
    assert "fragile" in [c["name"] for c in data["components"]["propagator"]]
    assert "warning: plugin 'boom' failed in register_metrics: RuntimeError: boom in register" in r.stderr
    # --check starts the third-party components: the fragile one's constructor is a problem, exit 1
    r = run_cli("plugins", "--json", "--check", env=env)
    assert r.returncode == 1, r.stderr
    started = [p["message"] for p in json.loads(r.stdout)["problems"] if p["plugin"] == "fragile"]
    assert len(started) == 1 and "failed to start: OSError: no such weights file" in started[0]

    r = run_cli("pipelines", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert "ip-facediff" in json.loads(r.stdout)["pipelines"]

    from PIL import Image

    from ipfacediff.runtime.video import open_frames

    keys = tmp_path / "keys"
    keys.mkdir()
    with open_frames(sample_clip) as src:
        Image.fromarray(src.get([0])[0]).save(keys / "0.png")
    out = tmp_path / "out.mp4"
    r = run_cli(
        "propagate", str(sample_clip), "--keyframes", str(keys), "-o", str(out), "--propagator", "fragile", env=env
    )
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "'fragile' of plugin 'fragile' failed to start: OSError: no such weights file" in last
    assert "Traceback" not in r.stderr and not out.exists()
