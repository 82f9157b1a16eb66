"""ipfacediff: identity-preserving, text-driven facial video editing with diffusion models.

The small core: component interfaces (:mod:`ipfacediff.interfaces`), plugin hooks
(:mod:`ipfacediff.hookspecs`), the plugin manager and catalog (:mod:`ipfacediff.catalog`, see
:func:`get_catalog`), the YAML registry (:mod:`ipfacediff.registry`), the model resolver
(:mod:`ipfacediff.runtime.models`), video and face I/O and the CLI.
"""

__version__ = "0.3.0"

from ipfacediff.hookspecs import hookimpl  # noqa: E402

__all__ = ["__version__", "hookimpl", "get_catalog"]


def get_catalog():
    """The catalog of every registered component (loads plugins on first use)."""
    from ipfacediff.catalog import get_catalog as _get

    return _get()
