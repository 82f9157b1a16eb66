"""How an error of ours quotes a library's error."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-blank line of ``exc``'s message, at most ``limit`` characters, or its class name
    when the message is empty: what an error of ours quotes from a library's error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__
