"""timm-style conformance: every registered component of every kind builds with its test options
and runs on a tiny input with finite output."""

import pytest

from conftest import needs_models
from ipfacediff.catalog import get_catalog
from ipfacediff.interfaces import KINDS
from ipfacediff.testing import conformance_check

ALL = [(kind, name) for kind in KINDS for name in get_catalog().names(kind)]


def test_every_kind_so_far_has_a_builtin():
    have = {kind for kind, _ in ALL}
    # the foundation ships these; the edit and fine-tuning issues add the other kinds
    assert {"face_processor", "identity_encoder", "metric", "backbone", "inverter", "editor", "propagator"} <= have


@needs_models
@pytest.mark.parametrize("kind, name", ALL, ids=[f"{k}:{n}" for k, n in ALL])
def test_component_conformance(kind, name, tmp_path):
    spec = get_catalog().get(kind, name)
    comp = spec.cls.build_for_test(str(tmp_path))
    comp.name = name
    assert comp.kind == kind
    result = conformance_check(comp)
    assert isinstance(result, dict)
