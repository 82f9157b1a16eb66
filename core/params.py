"""Declared, validated component parameters.

Each component declares its parameters once, as a dataclass named ``Params`` on its class. Values
from a registry file or ``--set key=value`` are checked against it *before* any model is built:
unknown keys, wrong types and values outside a ``Literal`` or a declared range are rejected with
the key path, the value and what is allowed.

Ranges are declared in the field metadata: ``field(default=0.5, metadata={"range": (0.0, 1.0)})``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from ipfacediff.errors import ParameterError


@dataclasses.dataclass
class NoParams:
    """The parameters of a component that takes none."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        inner = _type_name(args[0]) if args else "any"
        return f"a list of {inner}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise :class:`ParameterError`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ParameterError(f"{where}: {value!r} is not allowed; expected {_type_name(tp)}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ParameterError:
                continue
        raise ParameterError(f"{where}: {value!r} is not allowed; expected {_type_name(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"{where}: {value!r} is not allowed; expected {_type_name(tp)}")
        args = get_args(tp)
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ParameterError(f"{where}: {value!r} is not allowed; expected a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ParameterError(f"{where}: {value!r} is not allowed; expected true/false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ParameterError(f"{where}: {value!r} is not allowed; expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ParameterError(f"{where}: {value!r} is not allowed; expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ParameterError(f"{where}: {value!r} is not allowed; expected a string")
    return value


def validate_params(params_cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """Build an instance of the dataclass ``params_cls`` from ``values``, checking every key.

    :param params_cls: the component's ``Params`` dataclass.
    :param values: raw values (from YAML or ``--set``); ``None`` means all defaults.
    :param where: a human-readable location used in error messages, e.g.
        ``"registry.yaml: pipelines.ip-facediff.face_processor.params"``.
    :raises ParameterError: unknown key, wrong type, value out of range.
    """
    values = dict(values or {})
    if not isinstance(values, dict):
        raise ParameterError(f"{where}: expected a mapping of parameters, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    hints = typing.get_type_hints(params_cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            valid = ", ".join(fields) if fields else "none"
            raise ParameterError(f"{where}: unknown parameter {key!r}{hint} (valid: {valid})")
        f = fields[key]
        v = _coerce(value, hints[key], f"{where}.{key}")
        rng = f.metadata.get("range") if f.metadata else None
        if rng is not None and v is not None:
            lo, hi = rng
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ParameterError(f"{where}.{key}: {v!r} is out of range; allowed [{lo}, {hi}]")
        kwargs[key] = v
    try:
        return params_cls(**kwargs)
    except (TypeError, ValueError) as exc:  # missing required parameter or __post_init__ check
        raise ParameterError(f"{where}: {exc}") from exc


def describe_params(params_cls: type) -> list[dict[str, Any]]:
    """A JSON-able description of a Params dataclass: name, type, default, range, help."""
    hints = typing.get_type_hints(params_cls)
    out = []
    for f in dataclasses.fields(params_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        out.append(
            {
                "name": f.name,
                "type": _type_name(hints[f.name]),
                "default": default,
                "range": list(f.metadata["range"]) if f.metadata and "range" in f.metadata else None,
                "help": f.metadata.get("help", "") if f.metadata else "",
            }
        )
    return out
