"""``steer(model, vector)``: the user-facing entry point over :class:`SteeringEngine`.

``steer()`` turns every fresh model call (empty KV cache) into a new request per batch row:
:class:`PromptRequests` builds a :class:`BatchState` from the settings and hands it to the
engine with :meth:`SteeringEngine.use`; the engine decides the gates in that pass and
keeps them for the rest of the generation. A fresh pass whose tokens extend the previous
prompt of every row (``use_cache=False`` generation) keeps the decisions, so cached and
uncached greedy decoding agree.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import SteeringConfigError
from ..tensors import cache_length
from ..types import MODES
from ..vector.file import SteeringVector
from .engine import SteeringEngine
from .rows import RowSteering, check_choice
from .state import BatchState



class PromptRequests:
    """A model pre-hook (run before the engine's) that starts a request per fresh pass."""

    def __init__(self, engine: SteeringEngine):
        self.engine = engine
        self._rows: Callable[[int], list[RowSteering]] | None = None
        self._prompt_ids: torch.Tensor | None = None
        self._handle = engine.model.register_forward_pre_hook(
            self._on_model_call, with_kwargs=True, prepend=True)

    def configure(self, rows: Sequence[RowSteering]) -> None:
        """Settings for the next fresh pass: one per row, or one for every row. Validates at
        once and installs the hooks the settings need."""
        fixed = [r.resolved() for r in rows]
        self._rows = lambda b: _fit_rows(fixed, b)
        self.engine.ensure_points(BatchState.new(fixed).points())
        self.engine.use(None)
        self._prompt_ids = None

    def remove(self) -> None:
        self._handle.remove()

    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._rows is None or cache_length(kwargs) > 0:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            embeds = kwargs.get("inputs_embeds")
            batch = int(embeds.shape[0]) if embeds is not None else 1
        else:
            batch = int(ids.shape[0])
        if self._continues(ids, batch):
            return
        self.engine.use(BatchState.new(self._rows(batch)))
        self._prompt_ids = ids.detach().cpu().clone() if isinstance(ids, torch.Tensor) else None

    def _continues(self, ids: object, batch: int) -> bool:
        """Whether this pass extends the previous prompts of every row, all decided."""
        prev, state = self._prompt_ids, self.engine.state
        return (state is not None and prev is not None and isinstance(ids, torch.Tensor)
                and len(state) == batch and ids.dim() == 2 and ids.shape[1] > prev.shape[1]
                and torch.equal(ids[:, : prev.shape[1]].cpu(), prev)
                and bool(state.decided.all()))


def _fit_rows(rows: list[RowSteering], batch: int) -> list[RowSteering]:
    if len(rows) == batch:
        return rows
    if len(rows) == 1:
        return rows * batch
    raise SteeringConfigError(f"{len(rows)} per-row steering settings for a batch of "
                              f"{batch} rows")


class SteeringHandle:
    """Hooks installed by :func:`steer`. Use as a context manager or call :meth:`remove`.

    After each call of the model, :attr:`scores` holds the gate score of every row and
    :attr:`fired` whether its gate fired (rows in ``mode='always'`` count as fired).
    """

    def __init__(self, engine: SteeringEngine, vector: SteeringVector,
                 requests: PromptRequests):
        self.engine = engine
        self.vector = vector
        self.requests = requests

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
        self.requests.configure(rows_for(self.vector, strength, mode, action, layers,
                                         direction))

    def remove(self) -> None:
        self.requests.remove()
        self.engine.remove()

    def __enter__(self) -> "SteeringHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def rows_for(vector: SteeringVector, strength: float | Sequence[float] | torch.Tensor | None,
             mode: str, action: str | None, layers: Sequence[int] | None,
             direction: str | None) -> list[RowSteering]:
    """Row settings of :func:`steer`'s arguments: one row, or one per strength value."""
    check_choice("mode", mode, MODES)
    lay = tuple(int(x) for x in layers) if layers is not None else None
    if isinstance(strength, torch.Tensor):
        strength = strength.detach().cpu().reshape(-1).tolist() if strength.dim() else float(strength)
    if isinstance(strength, (list, tuple)):
        if not strength:
            raise SteeringConfigError("strength: an empty per-row list")
        return [RowSteering(vector, float(s), mode, action, direction, lay) for s in strength]
    return [RowSteering(vector, strength, mode, action, direction, lay)]  # type: ignore[arg-type]


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
    requests = PromptRequests(engine)
    try:
        requests.configure(rows_for(vec, strength, mode, action, layers, direction))
    except BaseException:
        requests.remove()
        engine.remove()
        raise
    return SteeringHandle(engine, vec, requests)
