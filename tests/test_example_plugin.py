"""The documented extension path: a separate package with an entry point, installed (here into a
temporary folder on PYTHONPATH, so nothing leaks into the venv or other tests), shows up in
`ipfacediff plugins` and works from a user registry file."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli

EXAMPLE = ROOT / "docs" / "example-plugin"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> dict[str, str]:
    """The example package pip-installed into a temporary folder; the environment that sees it."""
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    r = subprocess.run(
        [*pip, "install", "--no-deps", "--no-build-isolation", "--target", str(target), str(EXAMPLE)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return {"PYTHONPATH": str(target), "IPFACEDIFF_PLUGINS": None}


def test_example_plugin_is_listed(installed_example):
    r = run_cli("plugins", "--json", env=installed_example)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    plugin = next(p for p in data["plugins"] if p["name"] == "example")
    assert plugin["package"] == "ipfacediff-example" and plugin["version"] == "0.1.0" and not plugin["builtin"]
    assert plugin["components"] == {"propagator": ["nearest-keyframe"], "metric": ["mean-abs-diff"]}


def test_example_plugin_from_a_user_registry(installed_example):
    reg = EXAMPLE / "registry-example.yaml"
    r = run_cli("pipelines", "--registry", str(reg), "--json", env=installed_example)
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)["pipelines"]["crops-with-example"]
    assert p["components"]["propagator"] == {"component": "nearest-keyframe", "params": {"mode": "blend"}}
    # build the components from the registry in a fresh process and run them
    code = f"""
import json, numpy as np, torch
from ipfacediff.interfaces import PropagationInput
from ipfacediff.registry import load_registry
from ipfacediff.testing.conformance import conformance_check
p = load_registry({str(reg)!r}).pipeline("crops-with-example")
prop = p.components["propagator"].build()
keys = torch.tensor([0.0, 4.0]).view(2, 1, 1, 1)
out = prop.propagate(PropagationInput(key_rows=[0, 4], frames=[0, 1, 2, 3, 4], edited_latents=keys))
metric = [m.build() for m in p.metrics if m.name == "mean-abs-diff"][0]
conformance_check(prop)
conformance_check(metric)
mad = metric.compute(np.zeros((2, 4, 4, 3), np.uint8), np.full((2, 4, 4, 3), 3, np.uint8))["value"]
print(json.dumps({{"blend": out.flatten().tolist(), "mad": mad}}))
"""
    env = {k: v for k, v in {**os.environ, **installed_example}.items() if v is not None}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res == {"blend": [0.0, 1.0, 2.0, 3.0, 4.0], "mad": 3.0}


def test_without_the_plugin_the_registry_names_the_missing_component(installed_example):
    # IPFACEDIFF_PLUGINS="" loads no third-party plugin: the user registry now refers to nothing
    env = {**installed_example, "IPFACEDIFF_PLUGINS": ""}
    r = run_cli("pipelines", "--registry", str(EXAMPLE / "registry-example.yaml"), env=env)
    assert r.returncode == 2 and "unknown propagator 'nearest-keyframe'" in r.stderr
