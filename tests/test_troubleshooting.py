"""Meta-test: every error message a user can get is on the troubleshooting page.

Each ``raise SomeError(...)`` in core/ and plugins/ whose class derives from IPFaceDiffError is read
from the source (AST); the constant parts of its message (split at ``;``, parentheses and ``, e.g.``)
are looked up in docs/troubleshooting.md. A message passes when one of its parts of 8 characters
or more is on the page (the page writes the variable parts as PATH, N, ...)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import ipfacediff.errors as errors

ROOT = Path(__file__).resolve().parent.parent
USER_ERRORS = {
    name for name, cls in vars(errors).items() if inspect.isclass(cls) and issubclass(cls, errors.IPFaceDiffError)
}


def _constant_parts(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        parts, cur = [], ""
        for v in node.values:
            if isinstance(v, ast.Constant):
                cur += v.value
            else:
                parts.append(cur)
                cur = ""
        return [*parts, cur]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _constant_parts(node.left) + _constant_parts(node.right)
    return []


def user_error_messages() -> list[tuple[str, int, list[str]]]:
    found = []
    for path in sorted([*ROOT.glob("core/**/*.py"), *ROOT.glob("plugins/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args):
                continue
            fn = node.exc.func
            if (fn.id if isinstance(fn, ast.Name) else getattr(fn, "attr", "")) not in USER_ERRORS:
                continue
            pieces = []
            for part in _constant_parts(node.exc.args[0]):
                for piece in re.split(r"[;()]|, e\.g\.", part):
                    piece = " ".join(piece.strip(" :,.'\"").split())
                    if len(piece) >= 8:
                        pieces.append(piece)
            found.append((f"{path.parent.name}/{path.name}", node.lineno, pieces))
    return found


def test_every_user_error_message_is_on_the_troubleshooting_page():
    page = " ".join((ROOT / "docs" / "troubleshooting.md").read_text().split())
    messages = user_error_messages()
    assert len(messages) > 100  # the scan found the raise sites
    missing = [
        f"{where}:{line}: {max(pieces, key=len)!r}"
        for where, line, pieces in messages
        if pieces and not any(p in page for p in pieces)
    ]
    assert not missing, "add these messages (cause and fix) to docs/troubleshooting.md:\n" + "\n".join(missing)


def test_the_scan_sees_a_message_that_is_not_documented(tmp_path):
    """The check can fail: a message that is not on the page is reported."""
    page = " ".join((ROOT / "docs" / "troubleshooting.md").read_text().split())
    node = ast.parse('raise InputError(f"{p}: the moon is made of cheese; try again")').body[0]
    pieces = [
        " ".join(x.strip(" :,.'\"").split())
        for part in _constant_parts(node.exc.args[0])
        for x in re.split(r"[;()]", part)
    ]
    assert "the moon is made of cheese" in pieces and not any(p in page for p in pieces if len(p) >= 8)
