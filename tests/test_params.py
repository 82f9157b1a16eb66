from dataclasses import dataclass, field
from typing import Literal

import pytest

from ipfacediff.cli import parse_set_option
from ipfacediff.errors import ParameterError
from ipfacediff.params import describe_params, validate_params


@dataclass
class P:
    steps: int = field(default=10, metadata={"range": (1, 1000)})
    scale: float = 7.5
    mode: Literal["a", "b"] = "a"
    path: str | None = None
    layers: list[int] = field(default_factory=lambda: [1, 2])
    on: bool = True


def test_defaults_and_coercion():
    p = validate_params(P, {"scale": 3, "layers": [4]}, "x")
    assert p.scale == 3.0 and isinstance(p.scale, float) and p.layers == [4] and p.steps == 10


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"stpes": 3}, "did you mean 'steps'"),
        ({"steps": "ten"}, "expected an integer"),
        ({"steps": 0}, "out of range"),
        ({"mode": "c"}, "one of 'a', 'b'"),
        ({"on": "yes"}, "true/false"),
        ({"layers": [1, "x"]}, "layers[1]"),
    ],
)
def test_bad_values_name_key_value_and_allowed(values, needle):
    with pytest.raises(ParameterError) as e:
        validate_params(P, values, "reg.yaml: pipelines.p.editor.params")
    msg = str(e.value)
    assert needle in msg and "reg.yaml: pipelines.p.editor.params" in msg


def test_parse_set_nested_and_typed():
    assert parse_set_option(["face_processor.threshold=0.8", "a.b.c=true", "s=hello"]) == {
        "face_processor": {"threshold": 0.8},
        "a": {"b": {"c": True}},
        "s": "hello",
    }
    with pytest.raises(ParameterError):
        parse_set_option(["novalue"])


def test_describe():
    d = {r["name"]: r for r in describe_params(P)}
    assert d["steps"]["range"] == [1, 1000] and d["mode"]["type"] == "one of 'a', 'b'"
