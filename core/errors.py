"""Errors a user can cause.

Every exception derived from :class:`IPFaceDiffError` is a *user* error: the CLI prints its message on
one line (``error: ...``), exits with status 2 and shows no traceback unless ``--debug`` is given.
Anything else is a bug and is shown with its traceback.
"""

from __future__ import annotations


class IPFaceDiffError(Exception):
    """Base class of every error a user can cause (bad input, bad config, missing weights)."""

    exit_code = 2

    def one_line(self) -> str:
        return " ".join(str(self).split())


class RegistryError(IPFaceDiffError):
    """A registry file is unreadable, malformed or refers to something that does not exist."""


class UnknownComponentError(RegistryError):
    """A registry entry or a command-line option names a component that no plugin registered."""


class DuplicateComponentError(RegistryError):
    """Two plugins registered the same name for the same kind."""


class ParameterError(RegistryError):
    """A component parameter has an unknown key, a wrong type or a value outside what is allowed."""


class PluginLoadError(IPFaceDiffError):
    """A plugin could not be imported or registered something that is not a valid component."""


class ModelNotFoundError(IPFaceDiffError):
    """A weight file could not be found locally and could not be downloaded."""


class ModelChecksumError(IPFaceDiffError):
    """A weight file exists but its sha256 is not the expected one (truncated or wrong file)."""


class InputError(IPFaceDiffError):
    """An input path is missing, empty, unreadable or not a video/image."""


class NoFaceError(IPFaceDiffError):
    """No face was found where one is needed."""


class OutputExistsError(IPFaceDiffError):
    """The output exists and ``--overwrite`` was not given."""
