"""matplotlib, headless, from the ``plots`` extra (a clear error names it when missing)."""

from __future__ import annotations

from typing import Any

from .errors import require


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend."""
    matplotlib = require("matplotlib", "plots", "drawing the report figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
