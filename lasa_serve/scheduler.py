"""The model worker: one thread that owns the model and runs an iteration-level scheduler.

Each iteration it (1) runs queued side tasks (moderation scoring, vector checks), (2) drops
rows whose client went away, (3) admits waiting requests within the iteration's token
budget (``max_batch_tokens`` less one token per running row): their prompts are prefilled
together (left padding, positions from the mask, the gate decided in that pass), or a prompt
longer than the budget is prefilled one chunk per iteration (:mod:`lasa_serve.prefill`),
and finished prompts' KV caches are merged into the running batch, (4) runs one decode step
for every running row, each row with its own steering (a :class:`~lasa_steer.BatchState`
row), and (5) drops finished rows. Requests therefore share forward passes whatever their
vectors, strengths or modes, a request's greedy output does not depend on its neighbours,
and a long prompt delays the running streams by one chunk per token, not by its prefill.
Admission also keeps the running rows' worst-case KV cache within a byte budget
(:mod:`lasa_serve.budget`), and a step that runs out of memory fails the newest request
alone: the cache is cut back and the others go on (a joint prefill that runs out of memory
is retried one request at a time).

Results go back to the web side through each job's ``emit`` callback (thread-safe), one
call per iteration with a list of events.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Sequence

import torch
from transformers import DynamicCache

from lasa_steer import BatchState, SteeringEngine, SteeringVector
from lasa_steer.capture import gate_decisions
from lasa_steer.model.placement import input_device

from .backend import GateReadings

from . import kv
from .budget import KVBudget
from .jobs import Event, Job, Row
from .metrics import Metrics
from .prefill import MIN_CHUNK, Prefill, eos_ids, fail_jobs
from .sampling import pick_all
from .textstream import TextStream

log = logging.getLogger("lasa.server")


def gate_readings(model: torch.nn.Module, tok: Any, vector: SteeringVector,
                  texts: Sequence[str]) -> GateReadings:
    """THE gate decision on ``texts`` as user prompts (:func:`lasa_steer.capture.
    gate_decisions`: the model runs up to the gate block only)."""
    d = gate_decisions(model, tok, vector, list(texts))
    return GateReadings([float(x) for x in d.scores.tolist()],
                        [bool(x) for x in d.fired.tolist()],
                        list(d.langs) or [None] * len(texts))


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA's OutOfMemoryError, or the CPU
    allocator's RuntimeError)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                               or "can't allocate memory" in text)


class Scheduler:
    """Owns ``model`` (and its :class:`SteeringEngine`) on a background thread."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, engine: SteeringEngine,
                 metrics: Metrics, max_batch: int = 32, max_batch_tokens: int = 2048,
                 kv_budget: int | None = None):
        self.model = model
        self.tok = tokenizer
        self.engine = engine
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.device = input_device(model)
        self.budget = KVBudget.for_model(model, kv_budget)
        log.info("HF engine: %s", self.budget.describe())
        self.eos = eos_ids(model, tokenizer)
        # transformers >= 5.24 names the KV-cache argument ``cache``; earlier ones
        # ``past_key_values`` (an unknown keyword would be swallowed by **kwargs).
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._cv = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._tasks: deque[tuple[Callable[[], Any], cf.Future]] = deque()
        self._rows: list[Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._state: BatchState | None = None
        self._partial: Prefill | None = None  # a prompt being prefilled chunk by chunk
        self._solo = 0  # jobs to admit one per prefill (after a joint prefill ran out of memory)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="lasa-model-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public (any thread)
    def kv_refusal(self, prompt_tokens: int, max_tokens: int, rows: int) -> str | None:
        """Why a request could never be admitted under the KV budget (None: it can)."""
        return self.budget.refusal(prompt_tokens, max_tokens, rows)

    def submit(self, job: Job) -> None:
        why = self.kv_refusal(len(job.prompt_ids), job.max_tokens, job.n)
        if why is not None:  # the web side checks first; this guards other callers
            job.emit([{"type": "error", "status": 400, "message": why}])
            return
        with self._cv:
            self._waiting.append(job)
            self._cv.notify()

    def call(self, fn: Callable[[], Any]) -> cf.Future:
        """Run ``fn`` on the worker thread between iterations (it owns the model)."""
        fut: cf.Future = cf.Future()
        with self._cv:
            self._tasks.append((fn, fut))
            self._cv.notify()
        return fut

    def gate(self, vector_name: str, vector: SteeringVector,
             texts: Sequence[str]) -> cf.Future:
        """:func:`gate_readings` of ``texts``, on the worker thread (it owns the model)."""
        return self.call(lambda: gate_readings(self.model, self.tok, vector, texts))

    def alive(self) -> bool:
        """The model-worker thread runs (it ends only on close)."""
        return self._thread.is_alive()

    def load(self) -> dict[str, int]:
        with self._cv:
            return {"running": len(self._rows), "waiting": len(self._waiting)}

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._closing or self._waiting or self._tasks or self._rows
                           or self._partial):
                    self._cv.wait()
                if self._closing:
                    break
                tasks = list(self._tasks)
                self._tasks.clear()
                admitted, long, budget = self._admit()
            for fn, fut in tasks:
                self._run_task(fn, fut)
            try:
                self._drop()
                pre = self._begin([long] if long is not None else admitted)
                if long is not None and pre is not None:
                    self._partial, pre = pre, None  # over the budget: in chunks
                if self._partial is not None:
                    self._prefill(self._partial, max(budget, MIN_CHUNK))
                if pre is not None:
                    self._prefill(pre)
                if self._rows:
                    self._decode()
            except Exception as exc:  # never let one bad batch kill the worker
                log.exception("model worker: batch failed; failing its requests")
                self._fail_all(exc)
            self.metrics.set_load(len(self._rows), len(self._waiting))
        for job in list(self._waiting) + (self._partial.jobs if self._partial else []):
            job.emit([{"type": "error", "status": 503, "message": "server shutting down"}])

    def _admit(self) -> tuple[list[Job], Job | None, int]:
        """Waiting jobs to prefill whole this iteration (FIFO, within the rows and the
        iteration's token budget), a job whose prompt alone exceeds the budget (prefilled
        in chunks, whatever its steering mode: :mod:`lasa_serve.prefill`), and the budget
        left for a chunk."""
        out: list[Job] = []
        rows = len(self._rows) + (self._partial.rows if self._partial else 0)
        budget = max(self.max_batch_tokens - len(self._rows), MIN_CHUNK)
        reserved = self._reserved()
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                continue
            size = len(job.prompt_ids)
            if rows + job.n > self.max_batch and (out or rows):
                break
            cost = job.n * self.budget.row_cost(size, job.max_tokens)
            if reserved + cost > self.budget.limit and (out or rows):
                break  # waits for running rows to finish (submit refused any that never fit)
            reserved += cost
            if size > budget:
                if out or self._partial is not None:
                    break
                return out, self._waiting.popleft(), budget
            self._waiting.popleft()
            out.append(job)
            rows += job.n
            budget -= size
            if self._solo:
                self._solo -= 1
                break
        return out, None, budget

    def _reserved(self) -> int:
        """KV bytes reserved by the running rows and the prompt being prefilled in chunks."""
        rows = [(r.job, 1) for r in self._rows if not r.done]
        rows += [(j, j.n) for j in (self._partial.jobs if self._partial else [])]
        return sum(k * self.budget.row_cost(len(j.prompt_ids), j.max_tokens) for j, k in rows)

    def _run_task(self, fn: Callable[[], Any], fut: cf.Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            with self.engine.paused():
                fut.set_result(fn())
        except BaseException as exc:  # handed to the caller
            fut.set_exception(exc)

    # ------------------------------------------------------------------ prefill
    def _begin(self, jobs: list[Job]) -> Prefill | None:
        """The prefill of ``jobs`` (None: no jobs, or their steering failed them alone)."""
        if not jobs:
            return None
        try:
            return Prefill.start(jobs, self.tok.pad_token_id, self.device)
        except Exception as exc:
            log.exception("steering of %d request(s) failed", len(jobs))
            fail_jobs(jobs, exc)
            return None

    def _prefill(self, pre: Prefill, budget: int | None = None) -> None:
        """Run ``pre`` whole (``budget`` None) or its next chunk; join its rows when done."""
        if pre is self._partial and pre.cancelled:
            self._partial = None
            return
        try:
            if not pre.step(self.model, self.engine, self._cache_kw, budget):
                return
        except Exception as exc:
            if out_of_memory(exc) and len(pre.jobs) > 1 and pre is not self._partial:
                # nothing was emitted yet: run them again one prefill each, at the front
                log.warning("prefill of %d requests out of memory; retrying one by one",
                            len(pre.jobs))
                with self._cv:
                    self._waiting.extendleft(reversed(pre.jobs))
                    self._solo = len(pre.jobs)
                return
            log.exception("prefill of %d request(s) failed", len(pre.jobs))
            fail_jobs(pre.jobs, exc)
            self._partial = None if pre is self._partial else self._partial
            return
        finally:
            self.engine.use(self._state)
        if pre is self._partial:
            self._partial = None
        index = pre.report(self.metrics)
        cache, mask = kv.select(pre.cache, pre.mask, index)
        state = pre.state.select(index)
        assert pre.logits is not None
        logits = pre.logits.index_select(0, torch.as_tensor(index, device=self.device))
        new_rows = [Row(job=j, index=k, sampler=j.samplers[k], text=TextStream(self.tok, j.stop))
                    for j in pre.jobs for k in range(j.n)]
        self._cache, self._mask = kv.merge(self._cache, self._mask, cache, mask)
        self._state = state if self._state is None or not self._rows else \
            BatchState.concat([self._state, state])
        self._rows.extend(new_rows)
        self.engine.use(self._state)
        self._advance(new_rows, logits)
        self._drop()

    # ------------------------------------------------------------------ decode
    def _decode(self) -> None:
        assert self._cache is not None and self._mask is not None
        rows = self._rows
        ids = torch.tensor([[r.last] for r in rows], dtype=torch.long, device=self.device)
        pos = self._mask.sum(-1, keepdim=True)  # the next position of every row
        mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        self.engine.use(self._state)
        try:
            with torch.inference_mode():
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                 use_cache=True, **{self._cache_kw: self._cache})
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not out_of_memory(exc):
                raise
            self._shed(exc)
            return
        self._mask = mask
        self.metrics.batch(len(rows))
        self._advance(rows, out.logits[:, -1, :])
        self._drop()

    def _advance(self, rows: list[Row], logits: torch.Tensor) -> None:
        """Take one sampled token per row; emit text and finishes, grouped per job."""
        tokens = pick_all([r.sampler for r in rows], logits)
        events: dict[int, tuple[Job, list[Event]]] = {}
        for r, t in zip(rows, tokens):
            if r.done or r.job.cancelled.is_set():
                continue
            r.generated += 1
            r.last = t
            reason = None
            if t in self.eos:
                reason = "stop"
            elif r.text.add(t):
                reason = "stop"
            elif r.generated >= r.job.max_tokens:
                reason = "length"
            piece = r.text.release(final=reason is not None)
            evs = events.setdefault(id(r.job), (r.job, []))[1]
            if piece:
                evs.append({"type": "text", "index": r.index, "text": piece})
            if reason:
                r.done = True
                r.job.open_rows -= 1
                self.metrics.completion_tokens(r.generated)
                evs.append({"type": "finish", "index": r.index, "reason": reason,
                            "tokens": r.generated})
                if r.job.open_rows == 0:
                    evs.append({"type": "done"})
                    self.metrics.latency(time.monotonic() - r.job.submitted)
        for job, evs in events.values():
            if evs:
                job.emit(evs)

    def _drop(self) -> None:
        """Remove finished rows (and rows of cancelled jobs) from the running batch."""
        for r in self._rows:
            if not r.done and r.job.cancelled.is_set():
                r.done = True
                self.metrics.completion_tokens(r.generated)
        keep = [i for i, r in enumerate(self._rows) if not r.done]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask, self._state = [], None, None, None
            self.engine.use(None)
            return
        self._rows = [self._rows[i] for i in keep]
        assert self._cache is not None and self._mask is not None and self._state is not None
        self._cache, self._mask = kv.select(self._cache, self._mask, keep)
        self._state = self._state.select(keep)
        self.engine.use(self._state)

    def _shed(self, exc: BaseException) -> None:
        """A decode step ran out of memory: undo its partial cache writes and fail the
        newest request alone (its rows are the last to join); the others retry next step."""
        assert self._cache is not None and self._mask is not None
        kv.crop(self._cache, self._mask.shape[1])
        victim = self._rows[-1].job
        log.warning("decode step out of memory (%d rows); failing request %s alone",
                    len(self._rows), victim.id)
        for r in self._rows:
            if r.job is victim and not r.done:
                r.done = True
        victim.emit([{"type": "error", "status": 503,
                      "message": "the server ran out of memory for this request; retry "
                                 "later or with fewer max_tokens"}])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._drop()

    def _fail_all(self, exc: Exception) -> None:
        jobs = {id(r.job): r.job for r in self._rows if not r.done}
        for job in jobs.values():
            job.emit([{"type": "error", "status": 500,
                       "message": f"generation failed: {type(exc).__name__}"}])
        self._rows, self._cache, self._mask, self._state = [], None, None, None
        self.engine.use(None)
