"""Built-in plugins, one file per registered component: ``plugins/<kind>/<name>.py`` (hyphens of the
registered name as underscores), e.g. ``ipfacediff.plugins.strategies.ip_facediff``. Each registers its
component through the same hooks a third-party package uses (:mod:`ipfacediff.hookspecs`).

``DEFAULT_PLUGINS`` is what is on disk: every module of a kind's folder (its plural, from
``ipfacediff.interfaces.KINDS``) except those whose name starts with ``_`` (helpers a folder's
plugins share)."""

from __future__ import annotations

from pathlib import Path

from ipfacediff.interfaces import KINDS


def _builtin_plugins() -> tuple[str, ...]:
    here = Path(__file__).resolve().parent
    return tuple(
        f"{__name__}.{plural}.{f.stem}"
        for plural in sorted(KINDS.values())
        for f in sorted((here / plural).glob("*.py"))
        if not f.stem.startswith("_")
    )


DEFAULT_PLUGINS: tuple[str, ...] = _builtin_plugins()
