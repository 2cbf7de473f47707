"""Running a fired request's prompt again, steered throughout (chunked prefill).

A ``gate`` request whose action steers prompt tokens (``add``/``project``/``clamp``, or
``prefix`` at a non-zero strength) is steered, in the HF engine's single prompt pass, at
every prompt token from the gate block on once its gate fires. Under chunked prefill the
gate decides in the pass that holds the last prompt token, so the chunks before it ran
unsteered: their KV cache, and the first token sampled from it, are not the HF engine's.
The steering then asks for the prompt to be run again (:func:`request`, from the worker
right after the deciding pass) and vLLM's own preemption does it: the scheduler drops the
token sampled in that pass and preempts the request (blocks freed, computed tokens back to
0, first in the waiting queue); it comes back as a resumed request whose decision is kept,
so every chunk of the second run is steered, which is the HF engine's single pass (the
same rule as ``lasa serve``'s chunked prefill, :mod:`lasa_serve.prefill`). Such a request
never reads the prefix cache (:mod:`.cache`), so the second run computes every token.

The request travels on the step's output: the worker (its model runner's ``execute_model``
/ ``sample_tokens``, wrapped by the graph steering) sets :data:`ATTR` on the
``ModelRunnerOutput`` it returns (:func:`attach`), which reaches the scheduler in the
engine core's process as it is (in process, or pickled by vLLM's multiprocessing
executor); with tensor parallelism every rank decides alike and the output rank's list is
the one read. Importing this module does not import vLLM.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

ATTR = "lasa_recompute"  # on a ModelRunnerOutput: request ids whose prompt runs again
PENDING: set[str] = set()  # named in this worker since its last output


def request(req_id: str) -> None:
    """Ask the scheduler to run ``req_id``'s prompt again, dropping the token sampled in
    the pass that just ran (sent with this step's output, :func:`attach`)."""
    PENDING.add(req_id)


def attach(output: Any) -> Any:
    """``output`` (a runner's ``ModelRunnerOutput``, an async one, or None) carrying the
    pending request ids (a copy: vLLM reuses some outputs), which are then cleared."""
    if not PENDING or output is None:
        return output
    ids = tuple(sorted(PENDING))
    if hasattr(output, "get_output"):  # AsyncModelRunnerOutput: the real one comes later
        PENDING.clear()
        later = output.get_output

        def get_output() -> Any:
            return _with(later(), ids)
        output.get_output = get_output
        return output
    if not hasattr(output, "sampled_token_ids"):
        return output
    PENDING.clear()
    return _with(output, ids)


def _with(output: Any, ids: tuple[str, ...]) -> Any:
    out = copy.copy(output)
    setattr(out, ATTR, ids)
    return out


def wrap_update(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Scheduler.update_from_output`` that first drops the sampled tokens of the requests
    the output names (:data:`ATTR`) and, after the original, preempts them (they then run
    from their first token). An output that names none goes to the original untouched."""

    def update_from_output(self: Any, scheduler_output: Any, model_runner_output: Any
                           ) -> Any:
        named = getattr(model_runner_output, ATTR, None)
        if not named:
            return original(self, scheduler_output, model_runner_output)
        redo = [r for r in named if r in scheduler_output.num_scheduled_tokens]
        sampled = model_runner_output.sampled_token_ids
        index = model_runner_output.req_id_to_index
        for req_id in redo:
            if sampled and req_id in index:
                sampled[index[req_id]] = []
        out = original(self, scheduler_output, model_runner_output)
        for req_id in redo:
            req = self.requests.get(req_id)
            if req is None or req.is_finished() or req not in self.running:
                continue
            self.running.remove(req)
            self._preempt_request(req, time.monotonic(), drop_stale_output=True)
        return out

    update_from_output._lasa_wrapped = True  # type: ignore[attr-defined]
    update_from_output.__wrapped__ = original  # type: ignore[attr-defined]
    update_from_output.__doc__ = original.__doc__
    return update_from_output
