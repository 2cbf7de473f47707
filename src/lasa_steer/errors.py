"""Exception types of lasa-steer.

Every error names the file, field or argument at fault and, where there is one, what to do.
Catch :class:`LasaError` to handle them all.
"""

from __future__ import annotations


class LasaError(Exception):
    """Base class of every error raised on purpose by lasa-steer."""


class ModelLoadError(LasaError):
    """A model could not be found or loaded (the message lists what was tried)."""


class UnsupportedArchitectureError(LasaError):
    """The decoder blocks of a model could not be located automatically."""


class VectorFileError(LasaError):
    """A vector file is missing, corrupt, of an unknown format version or holds bad values."""


class VectorMismatchError(LasaError):
    """A vector was made for another model (hidden size, layer count or fingerprint differ)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class SteeringConfigError(LasaError, ValueError):
    """An argument of :func:`lasa_steer.steer` (or a per-row setting) is invalid; ``field``
    names the setting at fault when the raiser knows it (e.g. ``lasa_mode``)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class DataError(LasaError):
    """A data file is malformed; the message names the file and the row."""


class FitConfigError(LasaError, ValueError):
    """An argument of :func:`lasa_steer.fit.fit` (or ``lasa fit``) is invalid; the message
    names it."""


class ExportError(LasaError):
    """A vector cannot be written as a llama.cpp control vector (the message says why)."""


class VectorNameError(LasaError, ValueError):
    """A vector name (a file stem in a vector folder) is not valid."""


class MissingExtraError(LasaError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or raise :class:`MissingExtraError` naming its extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the '{module}' package: pip install 'lasa-steer[{extra}]'"
        ) from exc
