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
    """An argument of :func:`lasa_steer.steer` (or a per-row setting) is invalid."""


class DataError(LasaError):
    """A data file is malformed; the message names the file and the row."""
