"""The plugin-hook reference (``docs/plugin-hooks.md`` below its marker line) generated from the
hookspec docstrings, the interfaces' docstrings and signatures, and the built-ins of each kind, so
the reference cannot drift from the code. ``python -m ipfacediff.testing.hookdoc docs/plugin-hooks.md``
rewrites it; ``tests/test_hooks_documented.py`` fails when the committed file differs."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path

MARKER = (
    "<!-- generated from the hookspecs and interfaces: python -m ipfacediff.testing.hookdoc docs/plugin-hooks.md -->"
)
TYPES = ("FaceDetection", "AlignedFace", "Inversion", "PropagationInput", "EditRun", "TrainingBatch")


def _doc(obj) -> str:
    text = inspect.cleandoc(obj.__doc__ or "")
    keep = [p for p in text.split("\n\n") if not p.lstrip().startswith((":param", "Example"))]
    return "\n\n".join(keep)


def _methods(cls) -> list[str]:
    out = []
    for name, fn in vars(cls).items():
        if name.startswith("_") or not callable(fn) and not isinstance(fn, property):
            continue
        if isinstance(fn, property):
            out.append(
                f"- `{name}` (property): {(_doc(fn.fget) or '').splitlines()[0] if fn.fget.__doc__ else ''}".rstrip(
                    ": "
                )
            )
            continue
        sig = str(inspect.signature(fn)).replace("(self, ", "(").replace("(self)", "()").replace("'", "")
        first = _doc(fn).split("\n\n")[0].replace("\n", " ")
        out.append(f"- `{name}{sig}`" + (f": {first}" if first else ""))
    return out


def _attributes(cls) -> list[str]:
    from ipfacediff.interfaces import Component

    out = []
    for name, value in vars(cls).items():
        if (
            name.startswith("_")
            or callable(value)
            or isinstance(value, (property, classmethod, staticmethod))
            or name in vars(Component)
        ):
            continue
        if name in ("kind", "plural"):
            continue
        out.append(f"`{name} = {value!r}`")
    return out


def render() -> str:
    """The generated part of the hook reference."""
    from ipfacediff import hookspecs, interfaces
    from ipfacediff.catalog import get_catalog

    parts = []
    for kind, plural in interfaces.KINDS.items():
        hook = getattr(hookspecs, f"register_{plural}")
        cls = interfaces.INTERFACES[kind]
        builtins = [
            n for n in get_catalog().names(kind) if get_catalog().get(kind, n).plugin.startswith("ipfacediff.")
        ]
        lines = [
            f"## register_{plural}(register)",
            "",
            _doc(hook),
            "",
            f"Interface `ipfacediff.interfaces.{cls.__name__}`:",
            "",
            _doc(cls),
            "",
        ]
        attrs = _attributes(cls)
        if attrs:
            lines += ["Class attributes (defaults): " + ", ".join(attrs) + ".", ""]
        lines += _methods(cls) + [""]
        lines += [
            f"Built-ins: {', '.join(f'`{n}`' for n in builtins)} (`plugins/{plural}/<name>.py`).",
            "",
            "```python",
            "@ipfacediff.hookimpl",
            f"def register_{plural}(register):",
            f'    register(My{cls.__name__}, name="my-{kind.replace("_", "-")}")',
            "```",
            "",
        ]
        parts.append("\n".join(lines))
    types = ["## Data passed to components", ""]
    for name in TYPES:
        cls = getattr(interfaces, name)
        if dataclasses.is_dataclass(cls):
            fields = ", ".join(f"`{f.name}: {f.type}`" for f in dataclasses.fields(cls))
            types += [f"### {name}", "", _doc(cls), "", f"Fields: {fields}.", ""]
        else:  # an abstract class of state and methods (EditRun)
            attrs = ", ".join(f"`{k}: {v}`" for k, v in cls.__annotations__.items())
            types += [
                f"### {name}",
                "",
                _doc(cls),
                "",
                f"Attributes: {attrs}.",
                "",
                "Methods:",
                "",
                *_methods(cls),
                "",
            ]
    return "\n".join(parts) + "\n".join(types)


def write(path: str | Path) -> None:
    p = Path(path)
    head = p.read_text().split(MARKER)[0] if p.exists() else "# Plugin hook reference\n\n"
    p.write_text(head.rstrip() + "\n\n" + MARKER + "\n\n" + render().rstrip() + "\n")


if __name__ == "__main__":
    write(sys.argv[1] if len(sys.argv) > 1 else "docs/plugin-hooks.md")
