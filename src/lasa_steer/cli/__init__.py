"""The ``lasa`` command line (``lasa_steer.cli:main``)."""

from .main import main

__all__ = ["main"]
