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
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import SteeringConfigError
from ..tensors import cache_length
from ..types import MODES
from ..vector.file import SteeringVector
from .engine import SteeringEngine
from .openers import Openers, opener_text
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
                 requests: PromptRequests, opener_tokens: Openers | None = None):
        self.engine = engine
        self.vector = vector
        self.requests = requests
        self.opener_tokens = opener_tokens

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

    @property
    def langs(self) -> list[str | None] | None:
        """The language each row was identified as (language-aware gates; else None)."""
        return None if self.engine.state is None else list(self.engine.state.langs)

    @property
    def openers(self) -> list[str | None] | None:
        """Per row, the refusal sentence its reply was opened with (``prefix``/``refuse``
        rows that fired), else None: the text a judge must look past."""
        state = self.engine.state
        if state is None:
            return None
        return [opener_text(lang) if seq is not None else None
                for seq, lang in zip(state.forced, state.langs)]

    def set(self, strength: float | Sequence[float] | torch.Tensor | None = None,
            mode: str = "gate", action: str | None = None,
            layers: Sequence[int] | None = None, direction: str | None = None) -> None:
        """Change the settings for the next call (same meaning as in :func:`steer`)."""
        self.requests.configure(rows_for(self.vector, strength, mode, action, layers,
                                         direction, self.opener_tokens))

    def remove(self) -> None:
        self.requests.remove()
        self.engine.remove()

    def __enter__(self) -> "SteeringHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def rows_for(vector: SteeringVector, strength: float | Sequence[float] | torch.Tensor | None,
             mode: str, action: str | None, layers: Sequence[int] | None,
             direction: str | None, openers: Openers | None = None) -> list[RowSteering]:
    """Row settings of :func:`steer`'s arguments: one row, or one per strength value."""
    check_choice("mode", mode, MODES)
    lay = tuple(int(x) for x in layers) if layers is not None else None
    if isinstance(strength, torch.Tensor):
        strength = strength.detach().cpu().reshape(-1).tolist() if strength.dim() else float(strength)
    if isinstance(strength, (list, tuple)):
        if not strength:
            raise SteeringConfigError("strength: an empty per-row list")
        return [RowSteering(vector, float(s), mode, action, direction, lay, openers)  # type: ignore[arg-type]
                for s in strength]
    return [RowSteering(vector, strength, mode, action, direction, lay, openers)]  # type: ignore[arg-type]


def steer(model: nn.Module, vector: SteeringVector | str | os.PathLike[str],
          strength: float | Sequence[float] | torch.Tensor | None = None,
          mode: str = "gate", action: str | None = None,
          layers: Sequence[int] | None = None, *, direction: str | None = None,
          blocks: str | None = None, allow_mismatch: bool = False,
          tokenizer: Any = None, operating_point: str | None = None) -> SteeringHandle:
    """Steer ``model`` with ``vector`` (a :class:`SteeringVector` or a path to one).

    ``strength``: a scalar or one value per batch row (default: the file's default for its
    action; 1.0 for ``project``/``clamp`` otherwise). ``mode``: ``"gate"`` steers only rows
    whose prompt scores above the gate threshold at the bottleneck; ``"always"`` steers every
    row; ``"off"`` installs nothing active. ``action``: ``"add"``, ``"project"`` or
    ``"clamp"`` (default: the file's). ``layers``: 0-based blocks to steer (a subset of the
    file's). ``blocks`` names the decoder block list of an unknown architecture.
    ``allow_mismatch`` permits a vector made for another model of the same hidden size.
    ``action="prefix"`` opens a fired row's reply with a refusal sentence in the prompt's
    language and lets the model continue (steered with ``add`` at ``strength``, default 0);
    ``action="refuse"`` makes that sentence the whole reply. Both need ``tokenizer`` (default:
    the one :func:`~lasa_steer.load_model` attached to the model); the text is forced
    through the LM head's logits, so plain ``model.generate`` returns it.
    ``operating_point`` picks one of the gate's named threshold sets (``lasa info`` lists
    them with their measured rates; default: the file's, ``no-harm`` for the shipped one).
    """
    vec = vector if isinstance(vector, SteeringVector) else SteeringVector.load(vector)
    vec = vec.at_operating_point(operating_point)
    vec.check_model(model, blocks=blocks, allow_mismatch=allow_mismatch)
    engine = SteeringEngine(model, blocks=blocks)
    requests = PromptRequests(engine)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "lasa_tokenizer", None)
    openers = None if tokenizer is None else Openers.for_tokenizer(tokenizer, end_of_turn(model))
    try:
        requests.configure(rows_for(vec, strength, mode, action, layers, direction, openers))
    except BaseException:
        requests.remove()
        engine.remove()
        raise
    return SteeringHandle(engine, vec, requests, openers)


def end_of_turn(model: nn.Module) -> int | None:
    """The token that ends an assistant turn: the model's first end-of-sequence id."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return None if eos is None else int(eos)
