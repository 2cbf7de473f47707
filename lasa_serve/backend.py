"""The engine behind the HTTP layer: what the routes need from it, whichever engine it is.

Two engines implement :class:`Backend`: the HF scheduler (:class:`lasa_serve.scheduler.
Scheduler`, one thread that owns a transformers model) and vLLM
(:class:`lasa_serve.vllm_backend.VllmBackend`, ``lasa serve --engine vllm``). Everything
else (request validation, the steering field's resolution, prompts, responses, errors,
metrics) is shared and runs before a :class:`~lasa_serve.jobs.Job` reaches the backend.
A backend answers each job through its ``emit`` callback with the events the generation
responses read: ``steering`` (gate score, decision, language, prompt tokens; before any
text), ``text``, ``finish``, ``done`` and ``error``.
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from lasa_steer import SteeringVector

from .jobs import Job


@dataclass(frozen=True)
class GateReadings:
    """Gate results of some texts (``/v1/moderations``), one entry per text."""

    scores: list[float]
    fired: list[bool]
    langs: list[str | None]


class Backend(Protocol):
    def submit(self, job: Job) -> None:
        """Queue ``job``; its events come back through ``job.emit`` (thread-safe)."""

    def gate(self, vector_name: str, vector: SteeringVector,
             texts: Sequence[str]) -> "cf.Future[GateReadings]":
        """The gate of ``vector`` (loaded as ``vector_name``) on ``texts`` as user prompts."""

    def load(self) -> dict[str, int]:
        """``running`` and ``waiting`` counts for ``/health``."""

    def alive(self) -> bool:
        """Whether the engine can still generate (False: ``/health`` fails, the server
        exits)."""

    def close(self) -> None: ...


@dataclass
class Served:
    """A started engine and what the shared layer reads from the served model."""

    backend: Backend
    tokenizer: Any
    name: str  # the model's display name (default served model id)
    context: int  # the model's context window in tokens
    vocab_size: int
    end_of_turn: int | None  # the id that ends a forced ``refuse`` turn
    # (name, file or None, vector) -> None, or raise LasaError: whether a vector may serve
    fits: Callable[[str, Path | None, SteeringVector], None]
    description: str  # blocks, dtype, device: for the startup log
    close: Callable[[], None]
