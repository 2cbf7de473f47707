"""What the model worker runs: a :class:`Job` per API request, a :class:`Row` per choice,
and the events a job emits back to the web side."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from lasa_steer import RowSteering
from lasa_steer.steering.rows import OFF

from .sampling import Sampler
from .textstream import TextStream

Event = dict[str, Any]


@dataclass
class Job:
    """One API request: a prompt and ``n`` choices generated from it."""

    id: str
    prompt_ids: list[int]
    max_tokens: int
    samplers: list[Sampler]
    emit: Callable[[list[Event]], None]
    steering: RowSteering = OFF
    vector_name: str | None = None  # the served name of ``steering.vector`` (vLLM's keys)
    stop: list[str] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    # filled in by the worker
    score: float | None = None
    fired: bool = False
    language: str | None = None  # identified by a language-aware gate
    open_rows: int = 0

    @property
    def n(self) -> int:
        return len(self.samplers)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class Row:
    job: Job
    index: int
    sampler: Sampler
    text: TextStream
    last: int = -1
    generated: int = 0
    done: bool = False
