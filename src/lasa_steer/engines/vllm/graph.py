"""The graph-safe steering in a vLLM worker: the slots' op does tensor work only.

:class:`VllmGraphSteering` keeps the host steering's request bookkeeping (:mod:`.hooks`:
settings per request id, reports, forced openers) and moves the per-pass work onto
:class:`lasa_steer.steering.graph.GraphSteering`'s persistent buffers:

* each request that steers takes a slot when it first runs (its coefficients, gate, and
  ``always`` = fired are written then) and frees it when it finishes;
* before each forward pass (the runner's ``_model_forward``, which vLLM calls around its
  model, CUDA-graph wrapper or not) the host writes the rows' slots, read weights and the
  slots that decide their gate in this pass (the one holding the last prompt token);
* the ``lasa::steer_`` op at each block boundary runs :meth:`GraphSteering.run` on the
  block's output in place: reads, decisions, updates, with no Python branch on values, so
  torch.compile traces around it and a CUDA graph captured with it replays it;
* after the pass the host reads the new decisions back (score, fired, language), before
  the sampler's logits processor forces the ``prefix``/``refuse`` openers, and clears the
  per-row buffers (a pass the host did not plan, such as a warm-up run or a capture, then
  reads and steers nothing).

A prompt may come in several passes (chunked prefill): its reads add up across them
(:class:`~lasa_steer.steering.graph.Segment`); it must start at position 0 (no prefix
cache hit: gate requests never read the cache, :mod:`.cache`) while its gate is undecided.
A request that fires in a pass that did not hold its whole prompt, and whose action steers
prompt tokens, has its prompt run again with the decision kept (:mod:`.recompute`).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import torch
from torch import nn

from ...model.layers import LayerMap
from ...steering.graph import GraphSteering, Segment
from ...steering.openers import Openers
from ...vector.file import SteeringVector
from .batch import RequestState, Step, prompt_length
from .hooks import VllmSteering
from .params import Defaults
from .recompute import attach, request as recompute
from .slots import TARGET


OUTPUT_METHODS = ("execute_model", "sample_tokens")  # the runner's, returning the output


class _Unwrap:
    """Handle that restores the runner's own ``_model_forward`` and output methods."""

    NAMES = ("_model_forward",) + OUTPUT_METHODS

    def __init__(self, runner: Any):
        self.runner = runner
        self.own = {n: vars(runner).get(n) for n in self.NAMES}  # instance attributes, if any

    def remove(self) -> None:
        for name, own in self.own.items():
            if own is not None:
                setattr(self.runner, name, own)
            else:
                vars(self.runner).pop(name, None)


def _carrying(method: Any) -> Any:
    """``method`` whose returned step output carries the prompts to run again
    (:func:`.recompute.attach`)."""

    @functools.wraps(method)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return attach(method(*args, **kwargs))
    return wrapped


class VllmGraphSteering(VllmSteering):
    """Per-request steering whose in-pass work is :class:`GraphSteering`'s tensor step."""

    def __init__(self, model: nn.Module, runner: Any, vectors: Mapping[str, SteeringVector],
                 defaults: Defaults, layer_map: LayerMap | None = None,
                 openers: Openers | None = None, *, captured: bool = False,
                 full: bool = False):
        """``captured``: the engine replays CUDA graphs (the slots' Python does not run
        on a replay, so it is not counted). ``full``: run every point's whole tensor step
        in every pass, as a capture does (tests)."""
        self.captured, self.full = captured, full
        self._slot_of: dict[str, int] = {}
        self._deciding: dict[int, str] = {}  # slot -> request deciding in this pass
        self._read_upto: dict[str, int] = {}  # prompt positions a gate has read
        self._split: set[str] = set()  # deciding in this pass, earlier chunks ran before
        super().__init__(model, runner, vectors, defaults, layer_map, openers)

    def _attach(self) -> list[Any]:
        device = next(self.model.parameters()).device
        slots = int(self.runner.max_num_reqs)
        self.graph = GraphSteering(self.vectors, slots, int(self.runner.max_num_tokens),
                                   self.layer_map.hidden_size, device, full=self.full)
        self._free = list(range(slots - 1, -1, -1))
        handle = _Unwrap(self.runner)
        original = self.runner._model_forward

        @functools.wraps(original)
        def forward(*args: Any, **kwargs: Any) -> Any:
            self._before_pass()
            try:
                out = original(*args, **kwargs)
            except BaseException:
                self.graph.clear()
                raise
            self._after_pass()
            return out

        self.runner._model_forward = forward
        for name in OUTPUT_METHODS:  # the step's output carries prompts to run again
            if hasattr(self.runner, name):
                setattr(self.runner, name, _carrying(getattr(self.runner, name)))
        TARGET.fn = self.slot
        return [handle]

    # ------------------------------------------------------------- host, per pass
    def _before_pass(self) -> None:
        self.step = self._read_step(None)
        self._slot_calls = 0

    def _after_pass(self) -> None:
        step = self.step
        try:
            if step is not None and self._slot_calls == 0 and not self.captured:
                raise RuntimeError("lasa: the model ran a pass with steering work but never "
                                   "called its steering slots (lasa::steer_); was the model "
                                   "compiled without them?")
            if self._deciding:
                slots = list(self._deciding)
                for slot, (score, fired, lang) in zip(slots, self.graph.decisions(slots)):
                    req_id = self._deciding[slot]
                    s = self.requests[req_id]
                    s.score, s.fired, s.lang, s.decided = score, fired, lang, True
                    s.set_opener()
                    if fired and req_id in self._split and s.row.steer_points():
                        recompute(req_id)  # its earlier chunks ran unsteered
                        self.stats["prompt_recomputes"] += 1
        finally:
            self._deciding, self._split = {}, set()
            self.graph.clear()

    def _read_step(self, positions: Any) -> Step | None:
        step = self._new_step()
        if step is None:
            return None
        ids, states, starts, ends = step.req_ids, step.states, step.starts, step.ends
        computed = self.runner.input_batch.num_computed_tokens_cpu
        segments = []
        for i, (req_id, s) in enumerate(zip(ids, states)):
            slot = self._slot_of.get(req_id)
            if slot is None:
                continue
            first, length = int(computed[i]), prompt_length(self.runner, req_id)
            reads = not s.decided
            if reads:
                step.prompts[i] = (int(starts[i]), length)
                upto = self._read_upto.get(req_id, 0)
                if first == 0 and upto > 0:  # recomputed from the start (preempted)
                    self.graph.assign(slot, s.row)
                elif first != upto:
                    raise RuntimeError(
                        f"lasa: request {req_id!r} runs from position {first} but its gate "
                        f"has read its prompt up to {upto} (prefix caching is on?)")
                self._read_upto[req_id] = first + int(ends[i] - starts[i])
                if first > 0 and self._read_upto[req_id] >= length:
                    self._split.add(req_id)
            segments.append(Segment(slot, int(starts[i]), int(ends[i] - starts[i]), first,
                                    length, reads))
        request_of = {slot: r for r, slot in self._slot_of.items()}
        self._deciding = {slot: request_of[slot] for slot in self.graph.plan(segments)}
        self.stats["steered_passes"] += 1
        if step.prompts and len(step.prompts) < len(states):
            self.stats["gate_reads_beside_running"] += 1
        return step

    def _new(self, req_id: str) -> RequestState:
        state = super()._new(req_id)
        if state.row.mode != "off":
            if not self._free:
                raise RuntimeError(f"lasa: no free steering slot for request {req_id!r} "
                                   f"({self.graph.empty} slots = max_num_seqs)")
            slot = self._free.pop()
            self._slot_of[req_id] = slot
            self.graph.assign(slot, state.row)
        return state

    def _drop_finished(self) -> None:
        live = self.runner.requests
        for req_id in [r for r in self._slot_of if r not in live]:
            slot = self._slot_of.pop(req_id)
            self._read_upto.pop(req_id, None)
            self.graph.release(slot)
            self._free.append(slot)
        super()._drop_finished()

    # ------------------------------------------------------------- in the pass
    def slot(self, boundary: int, hidden: torch.Tensor, residual: torch.Tensor | None
             ) -> torch.Tensor | None:
        """The op's work at ``boundary``: :meth:`GraphSteering.run` at its points, in
        place (also in passes the host did not plan: a capture must hold the kernels)."""
        if self.step is not None:
            self._slot_calls += 1
        for point in self._points_at.get(boundary, ()):
            self.graph.run(point, hidden, residual)
        return None
