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

The worker and the scheduler must share a process: the engine core runs its worker in
process only with one worker (``UniProcExecutor``); :mod:`.checks` refuses chunked prefill
otherwise. Importing this module does not import vLLM.
"""

from __future__ import annotations

import time
from typing import Any, Callable

PENDING: set[str] = set()  # request ids whose prompt runs again (this process)
SCHEDULERS = [0]  # schedulers built in this process (a worker checks it shares one)


def request(req_id: str) -> None:
    """Ask the scheduler of this process to run ``req_id``'s prompt again, dropping the
    token sampled in the pass that just ran."""
    if not SCHEDULERS[0]:
        raise RuntimeError("lasa: a fired request's prompt must be run again (chunked "
                           "prefill) but no vLLM scheduler runs in this worker's process; "
                           "chunked prefill needs one in-process worker (tensor and "
                           "pipeline parallel size 1, distributed_executor_backend 'uni')")
    PENDING.add(req_id)


def count_scheduler(scheduler: Any, result: Any, *args: Any, **kwargs: Any) -> None:
    """After ``Scheduler.__init__``: this process has a scheduler."""
    SCHEDULERS[0] += 1


def wrap_update(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Scheduler.update_from_output`` that first drops the sampled tokens of the requests
    in :data:`PENDING` and, after the original, preempts them (they then run from their
    first token). Without pending requests it is the original."""

    def update_from_output(self: Any, scheduler_output: Any, model_runner_output: Any
                           ) -> Any:
        if not PENDING:
            return original(self, scheduler_output, model_runner_output)
        redo = [r for r in PENDING if r in scheduler_output.num_scheduled_tokens]
        PENDING.difference_update(redo)
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
