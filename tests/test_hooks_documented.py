"""Datasette-style meta-tests: every hook is documented with its exact signature, has a docstring,
and every kind has an interface."""

import inspect
import re

from conftest import ROOT

from ipfacediff import hookspecs
from ipfacediff.interfaces import INTERFACES, KINDS

DOC = (ROOT / "docs" / "plugin-hooks.md").read_text()
HOOK_NAMES = [f"register_{p}" for p in KINDS.values()]


def test_every_kind_has_its_hook_and_no_hook_is_extra():
    specs = sorted(n for n in vars(hookspecs) if n.startswith("register_"))
    assert specs == sorted(HOOK_NAMES)
    assert all(INTERFACES[kind].kind == kind for kind in KINDS)


def test_every_hook_has_a_heading_with_its_signature_and_a_docstring():
    for name in HOOK_NAMES:
        fn = getattr(hookspecs, name)
        assert fn.__doc__ and ":param register:" in fn.__doc__, name
        sig = f"{name}(register)"
        assert re.search(rf"^## {re.escape(sig)}$", DOC, re.M), f"docs/plugin-hooks.md has no heading '## {sig}'"
        assert list(inspect.signature(fn).parameters) == ["register"]


def test_documented_hooks_exist():
    for heading in re.findall(r"^## (register_\w+)\(", DOC, re.M):
        assert heading in HOOK_NAMES, f"docs/plugin-hooks.md documents an unknown hook {heading}"


def test_reference_is_generated_from_the_code():
    """docs/plugin-hooks.md below its marker is what the hookspecs and interfaces say today."""
    from ipfacediff.testing.hookdoc import MARKER, render

    assert MARKER in DOC, "docs/plugin-hooks.md lost its generated part"
    assert DOC.split(MARKER, 1)[1].strip() == render().strip(), (
        "docs/plugin-hooks.md has drifted from the code: run python -m ipfacediff.testing.hookdoc docs/plugin-hooks.md"
    )
