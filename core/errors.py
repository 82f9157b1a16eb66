"""Errors a user can cause: every :class:`IPFaceDiffError` is printed on one line (``error: ...``), exit
status 2, no traceback unless ``--debug``; anything else is a bug, shown with its traceback. And
:class:`EditWarning`, what a component says when it runs in a way the user did not ask for."""

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


class EditWarning(UserWarning):
    """``warnings.warn(msg, EditWarning)`` from a component: the job puts ``msg`` in its report's
    warnings and on the terminal."""
