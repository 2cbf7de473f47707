"""``steer(model, vector)``: the user-facing entry point over :class:`SteeringEngine`."""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn

from .engine import MODES, BatchState, RowSteering, SteeringEngine
from .errors import SteeringConfigError
from .vector import SteeringVector


class SteeringHandle:
    """Hooks installed by :func:`steer`. Use as a context manager or call :meth:`remove`.

    After each call of the model, :attr:`scores` holds the gate score of every row and
    :attr:`fired` whether its gate fired (rows in ``mode='always'`` count as fired).
    """

    def __init__(self, engine: SteeringEngine, vector: SteeringVector):
        self.engine = engine
        self.vector = vector

    @property
    def state(self) -> BatchState | None:
        return self.engine.state

    @property
    def scores(self) -> torch.Tensor | None:
        return None if self.engine.state is None else self.engine.state.scores.clone()

    @property
    def fired(self) -> torch.Tensor | None:
        return None if self.engine.state is None else self.engine.state.fired.clone()

    @property
    def threshold(self) -> float | None:
        return self.vector.gate.threshold if self.vector.gate else None

    def set(self, strength: float | Sequence[float] | torch.Tensor | None = None,
            mode: str = "gate", action: str | None = None,
            layers: Sequence[int] | None = None, direction: str | None = None) -> None:
        """Change the settings for the next call (same meaning as in :func:`steer`)."""
        self.engine.configure(_rows_for(self.vector, strength, mode, action, layers, direction))

    def remove(self) -> None:
        self.engine.remove()

    def __enter__(self) -> "SteeringHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _rows_for(vector: SteeringVector, strength, mode, action, layers, direction):
    if mode not in MODES:
        raise SteeringConfigError(f"mode={mode!r}: must be one of {MODES}")
    lay = tuple(int(x) for x in layers) if layers is not None else None
    if isinstance(strength, torch.Tensor):
        strength = strength.detach().cpu().reshape(-1).tolist() if strength.dim() else float(strength)
    if isinstance(strength, (list, tuple)):
        if not strength:
            raise SteeringConfigError("strength: an empty per-row list")
        return [RowSteering(vector, float(s), mode, action, direction, lay) for s in strength]
    return [RowSteering(vector, strength, mode, action, direction, lay)]


def steer(model: nn.Module, vector: SteeringVector | str | os.PathLike[str],
          strength: float | Sequence[float] | torch.Tensor | None = None,
          mode: str = "gate", action: str | None = None,
          layers: Sequence[int] | None = None, *, direction: str | None = None,
          blocks: str | None = None, allow_mismatch: bool = False) -> SteeringHandle:
    """Steer ``model`` with ``vector`` (a :class:`SteeringVector` or a path to one).

    ``strength``: a scalar or one value per batch row (default: the file's default for its
    action; 1.0 for ``project``/``clamp`` otherwise). ``mode``: ``"gate"`` steers only rows
    whose prompt scores above the gate threshold at the bottleneck; ``"always"`` steers every
    row; ``"off"`` installs nothing active. ``action``: ``"add"``, ``"project"`` or
    ``"clamp"`` (default: the file's). ``layers``: 0-based blocks to steer (a subset of the
    file's). ``blocks`` names the decoder block list of an unknown architecture.
    ``allow_mismatch`` permits a vector made for another model of the same hidden size.
    """
    vec = vector if isinstance(vector, SteeringVector) else SteeringVector.load(vector)
    vec.check_model(model, blocks=blocks, allow_mismatch=allow_mismatch)
    engine = SteeringEngine(model, blocks=blocks)
    try:
        engine.configure(_rows_for(vec, strength, mode, action, layers, direction))
    except BaseException:
        engine.remove()
        raise
    return SteeringHandle(engine, vec)
