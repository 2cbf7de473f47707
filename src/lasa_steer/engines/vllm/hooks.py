"""Per-request steering inside vLLM, run by the model's steering slots.

vLLM decoder layers take ``(positions, hidden_states, residual)`` and return
``(hidden_states, residual)``; the residual stream at a block's output (``resid_post``, the
HF block output) is their sum, and at its input (``resid_pre``) the sum of its inputs (the
input alone at block 0). The slots (:mod:`.slots`: the ``lasa::steer_`` op at every block
boundary, in the graph vLLM compiles) hand those tensors to :meth:`VllmSteering.slot`,
which reads gates and languages on the sum and adds the update to ``hidden_states`` (the
next layer's fused add-norm folds it into the stream). A pre-hook on the whole model (which
vLLM does not compile; it calls the compiled inner model) reads the runner's batch before
each pass. The maths is the HF engine's: :meth:`lasa_steer.steering.state.Update.apply`
(built by :func:`~lasa_steer.steering.state.update_of`) and
:func:`lasa_steer.steering.gate.decide` on states pooled by :func:`lasa_steer.tensors.pool`.
Modules are never replaced.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ...errors import LasaError
from ...model.layers import LayerMap, find_layers
from ...steering.gate import LID_POOLING, decide, lid_point
from ...steering.openers import Openers
from ...steering.state import Update, update_of
from ...tensors import pool
from ...types import Point
from ...vector.file import SteeringVector
from .batch import (RequestState, Step, batch_layout, extra_args_of, prompt_length,
                    unsteered)
from .params import Defaults, parse, resolve
from .slots import TARGET, boundary_points

log = logging.getLogger(__name__)
FINISHED_KEPT = 4096  # reports of finished requests kept for lasa_report
ACTIVE: list["VllmSteering"] = []  # this process's install, for the logits processor


def vector_points(v: SteeringVector) -> set[Point]:
    """Every point a vector may read or steer."""
    pts: set[Point] = {(v.site, layer) for d in v.directions.values() for layer in d}
    if v.gate is not None:
        pts.add((v.gate.site, v.gate.layer))
        lp = lid_point(v.gate)
        if lp is not None:
            pts.add(lp)
    return pts


class VllmSteering:
    """Hooks on one worker's model; per-request state keyed by vLLM request id."""

    def __init__(self, model: nn.Module, runner: Any, vectors: Mapping[str, SteeringVector],
                 defaults: Defaults, layer_map: LayerMap | None = None,
                 openers: Openers | None = None):
        self.model, self.runner, self.openers = model, runner, openers
        self.vectors, self.defaults = dict(vectors), defaults
        self.layer_map = layer_map or find_layers(model)
        self.requests: dict[str, RequestState] = {}
        self.finished: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.step: Step | None = None
        self._updates: dict[Point, Update | None] = {}
        self._updates_for: tuple[str, ...] | None = None
        # passes with steering work, those that read a gate while other requests decoded,
        # prompts run again after their gate fired (chunked prefill, graph steering), and
        # prompt tokens requests found in the prefix cache
        self.stats = {"steered_passes": 0, "gate_reads_beside_running": 0,
                      "prompt_recomputes": 0, "cached_prompt_tokens": 0}
        # boundary -> its points in order (block b-1's output, then block b's input)
        used = {p for v in self.vectors.values() for p in vector_points(v)}
        self._points_at: dict[int, list[Point]] = {}
        for b in range(self.layer_map.num_layers + 1):
            pts = [p for p in boundary_points(b) if p in used]
            if pts:
                self._points_at[b] = pts
        self._slot_calls = 0
        self._handles: list[Any] = self._attach()

    def _attach(self) -> list[Any]:
        """Run :meth:`_on_model_call` before and :meth:`_after_model_call` after each pass,
        and point the slots here; returns the handles :meth:`remove` removes."""
        TARGET.fn = self.slot
        return [self.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True),
                self.model.register_forward_hook(self._after_model_call)]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.step = None
        if TARGET.fn == self.slot:
            TARGET.fn = None

    def report(self, req_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Settings and gate results per request id (live and recently finished)."""
        out = {k: {**v, "live": False} for k, v in self.finished.items()}
        out.update({k: {**s.report(), "live": True} for k, s in self.requests.items()})
        return out if req_ids is None else {k: out[k] for k in req_ids if k in out}

    # ------------------------------------------------------------- per pass
    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        self.step = self._read_step(positions)
        self._slot_calls = 0

    def _after_model_call(self, module: nn.Module, args: tuple, output: Any) -> None:
        """A pass with steering work that never reached the slots ran a graph without
        them (a stale compiled artifact?): fail loudly rather than serve unsteered."""
        if self.step is not None and self._slot_calls == 0:
            raise RuntimeError("lasa: the model ran a pass with steering work but never "
                               "called its steering slots (lasa::steer_); was the model "
                               "compiled without them?")

    def _new_step(self) -> Step | None:
        """The pass about to run, its requests' states created as they first appear (None:
        no request, or none steered)."""
        ids, starts, ends = batch_layout(self.runner)
        self._drop_finished()
        if not ids:
            return None
        computed = self.runner.input_batch.num_computed_tokens_cpu
        states = []
        for i, req_id in enumerate(ids):
            state = self.requests.get(req_id)
            if state is None:
                state = self._new(req_id)
                self.stats["cached_prompt_tokens"] += int(computed[i])  # a cache hit
            states.append(state)
        if all(s.row.mode == "off" for s in states):
            return None
        return Step(ids, states, starts, ends)

    def _read_step(self, positions: Any) -> Step | None:
        step = self._new_step()
        if step is None:
            return None
        ids, states, starts, ends = step.req_ids, step.states, step.starts, step.ends
        for i, s in enumerate(states):
            if not s.decided:
                step.prompts[i] = self._whole_prompt(ids[i], int(starts[i]), int(ends[i]),
                                                     positions)
        if ids != self._updates_for:
            self._updates, self._updates_for = {}, ids
        self.stats["steered_passes"] += 1
        if step.prompts and len(step.prompts) < len(states):
            self.stats["gate_reads_beside_running"] += 1
        return step

    def _whole_prompt(self, req_id: str, start: int, end: int, positions: Any
                      ) -> tuple[int, int]:
        """``(first row, prompt length)`` of an undecided request, whose whole prompt must
        be in this pass (the host steering refuses chunked prefill; gate requests never
        read the prefix cache)."""
        length = prompt_length(self.runner, req_id)
        pos = positions[0] if isinstance(positions, torch.Tensor) and positions.dim() == 2 \
            else positions
        first = int(pos[start]) if isinstance(pos, torch.Tensor) else 0
        if first != 0 or end - start < length:
            raise RuntimeError(
                f"lasa: request {req_id!r} runs rows {start}:{end} from position {first} but "
                f"its gate needs its whole {length}-token prompt in one pass (chunked prefill "
                "or prefix caching is on?)")
        return start, length

    def _new(self, req_id: str) -> RequestState:
        try:
            settings = parse(extra_args_of(self.runner, req_id))
            row = resolve(settings, self.vectors, self.defaults, self.openers)
            state = RequestState.new(row, settings.vector or self.defaults.vector)
        except LasaError as exc:  # the validator refuses these before they get here
            log.error("lasa: request %s runs unsteered: %s", req_id, exc)
            state = unsteered()
            state.error = str(exc)
        self.requests[req_id] = state
        return state

    def _drop_finished(self) -> None:
        live = self.runner.requests
        for req_id in [r for r in self.requests if r not in live]:
            self.finished[req_id] = self.requests.pop(req_id).report()
            while len(self.finished) > FINISHED_KEPT:
                self.finished.popitem(last=False)

    def forced_tokens(self, num_rows: int) -> tuple[list[int], list[int]]:
        """Rows of the sampler's logits (one per request, batch order) whose next token is a
        forced opener token, and those tokens: token ``k`` of the opener when the request
        has ``k`` output tokens so far."""
        step = self.step
        if step is None or len(step.states) != num_rows:
            return [], []
        rows, tokens = [], []
        for i, (req_id, s) in enumerate(zip(step.req_ids, step.states)):
            if s.forced is None:
                continue
            done = len(self.runner.requests[req_id].output_token_ids)
            if done < len(s.forced):
                rows.append(i)
                tokens.append(s.forced[done])
        return rows, tokens

    # ------------------------------------------------------------- slots
    def slot(self, boundary: int, hidden: torch.Tensor, residual: torch.Tensor | None
             ) -> torch.Tensor | None:
        """The ``lasa::steer_`` op's work at ``boundary`` (:mod:`.slots`): ``hidden`` after
        the gates read and the updates applied at its points, or None (unchanged)."""
        if self.step is None:
            return None
        self._slot_calls += 1
        out = None
        for point in self._points_at.get(boundary, ()):
            new = self._apply(point, hidden if out is None else out, residual)
            out = new if new is not None else out
        return out

    def _apply(self, point: Point, hidden: torch.Tensor, residual: torch.Tensor | None
               ) -> torch.Tensor | None:
        step = self.step
        assert step is not None
        if step.prompts and any(point in (step.states[i].row.lid_point(),
                                          step.states[i].row.gate_point())
                                for i in step.prompts):
            n = step.num_tokens
            resid = hidden[:n] if residual is None else hidden[:n] + residual[:n]
            self._read_languages(step, point, resid)
            self._read_gates(step, point, resid)
        upd = self._update(step, point, hidden)
        if upd is None:
            return None
        rows = step.request_of_rows()
        sel = torch.nonzero(step.fired()[rows]).flatten()
        if sel.numel() == 0:
            return None
        dev = sel.to(hidden.device)
        h = hidden[dev]
        ref = None
        if upd.needs_proj:  # project/clamp read the component of the whole stream
            ref = (h if residual is None else h + residual[dev])[:, None, :]
        out = upd.rows(rows[sel].to(hidden.device)).apply(
            h[:, None, :], torch.ones(len(sel), device=hidden.device), ref=ref)
        return None if out is None else hidden.index_copy(0, dev, out[:, 0, :])

    def _update(self, step: Step, point: Point, hidden: torch.Tensor) -> Update | None:
        if point not in self._updates:
            self._updates[point] = update_of(step.rows, point, hidden.shape[-1], hidden.device)
        return self._updates[point]

    @staticmethod
    def _read_languages(step: Step, point: Point, resid: torch.Tensor) -> None:
        for i, (first, length) in step.prompts.items():
            if step.states[i].row.lid_point() == point:
                step.lid_states[i] = _pool(resid, first, length, LID_POOLING).cpu()

    @staticmethod
    def _read_gates(step: Step, point: Point, resid: torch.Tensor) -> None:
        groups: dict[int, list[int]] = {}
        for i in step.prompts:
            s = step.states[i]
            if not s.decided and s.row.gate_point() == point:
                groups.setdefault(id(s.row.vector.gate), []).append(i)  # type: ignore[union-attr]
        for idx in groups.values():
            gate = step.states[idx[0]].row.vector.gate  # type: ignore[union-attr]
            pooled = torch.cat([_pool(resid, *step.prompts[i], gate.pooling) for i in idx])
            lid = torch.cat([step.lid_states[i] for i in idx]) \
                if gate.language_aware and all(i in step.lid_states for i in idx) else None
            decision = decide(gate, pooled, lid)
            for k, i in enumerate(idx):
                s = step.states[i]
                s.score, s.fired = float(decision.scores[k]), bool(decision.fired[k])
                s.lang, s.decided = decision.langs[k], True
                s.set_opener()


def _pool(resid: torch.Tensor, first: int, length: int, pooling: str) -> torch.Tensor:
    """``[1, H]``: the prompt's rows pooled as the HF engine pools a padding-free row."""
    rows = resid[first:first + length][None]
    return pool(rows, torch.ones(1, length, dtype=torch.bool, device=resid.device), pooling)
