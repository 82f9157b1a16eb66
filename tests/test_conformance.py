"""timm-style conformance: every registered component of every kind keeps its kind's contracts
(``ipfacediff.testing.conformance.CHECKS``), one named test per component and contract."""

import pytest
from conftest import needs_models

from ipfacediff.catalog import get_catalog
from ipfacediff.interfaces import KINDS
from ipfacediff.testing.conformance import CHECKS, build_for_check

CASES = [(kind, name, check) for kind in KINDS for name in get_catalog().names(kind) for check in CHECKS[kind]]


def test_every_kind_has_a_builtin_and_contracts():
    for kind in KINDS:
        assert get_catalog().names(kind), f"no built-in {kind}"
        assert CHECKS[kind], f"no contract for {kind}"


@needs_models
@pytest.mark.parametrize("kind, name, check", CASES, ids=[f"{k}:{n}:{c}" for k, n, c in CASES])
def test_component_keeps_its_contract(kind, name, check, tmp_path):
    comp = build_for_check(get_catalog(), kind, name, str(tmp_path))
    assert comp.kind == kind
    CHECKS[kind][check](comp)
