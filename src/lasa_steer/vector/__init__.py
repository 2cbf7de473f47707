"""The vector file (:class:`SteeringVector`, :class:`Gate`) and its llama.cpp exchange."""

from .file import FORMAT_VERSION, Gate, SteeringVector

__all__ = ["FORMAT_VERSION", "Gate", "SteeringVector"]
