"""Per-request state and the per-step view of vLLM's flattened batch.

vLLM runs every scheduled token of every request as one ``[num_tokens, hidden]`` batch.
Before each forward pass the model runner holds, in batch order, each request's id
(``input_batch.req_ids``), its token rows (``query_start_loc.np``: rows of request ``i`` are
``qsl[i]:qsl[i+1]``), its prompt length and its ``SamplingParams``. :func:`read_step` turns
that into a :class:`Step`: the requests' settings and decisions as rows of the library's
per-row maths (:func:`lasa_steer.steering.state.update_of`, :func:`lasa_steer.steering.gate.decide`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...steering.rows import OFF, RowSteering


@dataclass
class RequestState:
    """One request's steering for its whole life (kept by request id, dropped when it ends)."""

    row: RowSteering
    decided: bool
    fired: bool
    score: float | None = None
    lang: str | None = None
    error: str | None = None
    name: str | None = None  # the vector's name at install
    forced: tuple[int, ...] | None = None  # the refusal opener's tokens (prefix/refuse)

    @classmethod
    def new(cls, row: RowSteering, name: str | None = None) -> "RequestState":
        gate = row.gate_point() is not None
        state = cls(row=row, decided=not gate, fired=row.mode == "always",
                    name=name if row.vector is not None else None)
        state.set_opener()
        return state

    def set_opener(self) -> None:
        """A fired ``prefix``/``refuse`` request's forced tokens, in its prompt's language
        (as :meth:`lasa_steer.steering.state.BatchState.record` sets them)."""
        r = self.row
        if r.forces_opener and self.fired and r.openers is not None:
            self.forced = r.openers.sequence(self.lang, r.action == "refuse")

    def report(self) -> dict[str, Any]:
        r = self.row
        return {"vector": self.name, "mode": r.mode,
                "action": r.action, "strength": r.strength, "direction": r.direction,
                "gate_score": self.score, "fired": self.fired, "lang": self.lang,
                "opener": list(self.forced) if self.forced is not None else None,
                "error": self.error}


@dataclass
class Step:
    """The requests of one forward pass, in batch order, and their token rows."""

    req_ids: tuple[str, ...]
    states: list[RequestState]
    starts: np.ndarray  # int [n]: first row of request i
    ends: np.ndarray  # int [n]: one past its last row
    # Request i's whole prompt is in this pass (undecided gate rows only): (first, P) rows
    prompts: dict[int, tuple[int, int]] = field(default_factory=dict)
    lid_states: dict[int, torch.Tensor] = field(default_factory=dict)  # language reads
    token_rows: torch.Tensor | None = None  # long [num_real_tokens]: request index per row

    @property
    def rows(self) -> list[RowSteering]:
        return [s.row for s in self.states]

    def fired(self) -> torch.Tensor:
        """Bool ``[n]``: which requests are steered now (gates decided in this pass count)."""
        return torch.tensor([s.fired for s in self.states], dtype=torch.bool)

    def request_of_rows(self) -> torch.Tensor:
        if self.token_rows is None:
            counts = torch.as_tensor(self.ends - self.starts, dtype=torch.long)
            self.token_rows = torch.repeat_interleave(torch.arange(len(self.states)), counts)
        return self.token_rows

    @property
    def num_tokens(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0


def batch_layout(runner: Any) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """``(req_ids, starts, ends)`` of the pass about to run, from the model runner."""
    batch = runner.input_batch
    n = int(batch.num_reqs)
    qsl = np.asarray(runner.query_start_loc.np[: n + 1], dtype=np.int64)
    return tuple(batch.req_ids[:n]), qsl[:-1].copy(), qsl[1:].copy()


def extra_args_of(runner: Any, req_id: str) -> dict[str, Any] | None:
    req = runner.requests.get(req_id)
    params = getattr(req, "sampling_params", None) if req is not None else None
    return getattr(params, "extra_args", None) if params is not None else None


def prompt_length(runner: Any, req_id: str) -> int:
    return int(runner.requests[req_id].num_prompt_tokens)


def unsteered() -> RequestState:
    return RequestState.new(OFF)
