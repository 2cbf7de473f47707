"""One generation request (chat or text completion): validation against the model and
the server's limits, per-request steering, submission to the engine
(:mod:`lasa_serve.backend`), and the OpenAI response, whole or as server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator, Callable, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from .. import errors
from ..errors import APIError
from ..protocol import CompletionChunk, SamplingRequest, SteeringResult, Usage
from ..runtime import Runtime
from ..sampling import make_sampler
from ..jobs import Job
from .steering import resolve_steering
from .text import check_text

DISCONNECT_POLL = 0.25  # seconds between checks that the client is still there


class Flavor(Protocol):
    """What differs between chat and text completions: names and choice shapes
    (:class:`~lasa_serve.serving.chat.ChatFlavor`, ``completion.TextFlavor``)."""

    object: str
    chunk_object: str
    id_prefix: str
    prompt_param: str

    def choice(self, i: int, text: str, finish: str) -> BaseModel: ...

    def delta(self, i: int, text: str | None, finish: str | None = None) -> BaseModel: ...

    def opening(self, i: int, prompt: int) -> BaseModel: ...

    def response(self, **fields: Any) -> BaseModel: ...


class Generation:
    """One generation request (chat or text completion), possibly several prompts."""

    def __init__(self, rt: Runtime, req: SamplingRequest, prompts: list[list[int]],
                 max_tokens: int | None, flavor: Flavor):
        self.rt, self.req, self.flavor = rt, req, flavor
        self.id = flavor.id_prefix + uuid.uuid4().hex
        self.created = int(time.time())
        self.n = req.n or 1
        if self.n > min(rt.config.max_n, rt.config.max_batch):
            raise APIError(400, f"n={self.n}: at most {min(rt.config.max_n, rt.config.max_batch)}"
                           " choices per request", param="n", code="invalid_value")
        if len(prompts) * self.n > rt.config.max_batch:
            raise APIError(400, f"{len(prompts)} prompts x n={self.n} exceed the batch limit of "
                           f"{rt.config.max_batch} rows", param="prompt",
                           code="batch_limit_exceeded")
        self.row, self.steer_info = resolve_steering(rt, req.steering)
        self.max_tokens: list[int] = []
        for i, ids in enumerate(prompts):
            room = rt.context - len(ids)
            which = f"prompt{f'[{i}]' if len(prompts) > 1 else ''}"
            if room < 1:
                raise APIError(400, f"this model's context window is {rt.context} tokens; the "
                               f"{which} has {len(ids)} tokens, leaving no "
                               "room to generate", param=flavor.prompt_param,
                               code="context_length_exceeded")
            limit = rt.config.max_prompt_tokens
            if limit and len(ids) > limit:
                raise APIError(400, f"the {which} has {len(ids)} tokens; this server takes "
                               f"prompts of at most {limit} tokens (--max-prompt-tokens)",
                               param=flavor.prompt_param, code="context_length_exceeded")
            want = max_tokens if max_tokens is not None else rt.config.default_max_tokens
            if rt.config.max_tokens_limit:
                want = min(want, rt.config.max_tokens_limit)
            self.max_tokens.append(min(want, room))
            why = getattr(rt.backend, "kv_refusal", lambda *a: None)(
                len(ids), self.max_tokens[-1], self.n)
            if why is not None:
                raise APIError(400, why, param="max_tokens", code="kv_budget_exceeded")
        self.prompts = prompts
        self.temperature = 1.0 if req.temperature is None else req.temperature
        self.top_p = 1.0 if req.top_p is None else req.top_p
        self.stops = req.stops()
        for k, stop in enumerate(self.stops):
            check_text(stop, "stop" if isinstance(req.stop, str) else f"stop.{k}")
        self.jobs: list[Job] = []
        self._langs: dict[int, str | None] = {}  # prompt index -> identified language

    # ------------------------------------------------------------------ submission
    def _submit(self, emit: Callable[[int, list[dict]], None]) -> None:
        for p, ids in enumerate(self.prompts):
            seeds = [None if self.req.seed is None else self.req.seed + k for k in range(self.n)]
            job = Job(id=f"{self.id}-{p}", prompt_ids=ids, max_tokens=self.max_tokens[p],
                      samplers=[make_sampler(self.temperature, self.top_p, s) for s in seeds],
                      emit=lambda evs, p=p: emit(p, evs), steering=self.row,
                      vector_name=self.steer_info.vector, stop=self.stops)
            self.jobs.append(job)
        for job in self.jobs:
            self.rt.backend.submit(job)

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()

    async def _events(self, request: Request) -> AsyncIterator[tuple[int, dict]]:
        """Events of all prompts as ``(prompt index, event)``, until every job is done.
        Cancels the jobs when the client disconnects or the consumer stops."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(p: int, evs: list[dict]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (p, evs))
            except RuntimeError:  # the loop is gone (shutdown)
                pass

        self._submit(emit)
        open_jobs = len(self.jobs)
        checked = time.monotonic()
        try:
            while open_jobs:
                try:
                    p, evs = await asyncio.wait_for(queue.get(), timeout=DISCONNECT_POLL)
                except asyncio.TimeoutError:
                    evs = []
                # polled while tokens flow too: a client that left a non-streamed request
                # frees its rows within DISCONNECT_POLL plus one engine step
                if time.monotonic() - checked >= DISCONNECT_POLL or not evs:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return
                for ev in evs:
                    if ev["type"] in ("done", "error"):
                        open_jobs -= 1
                    yield p, ev
        finally:
            self.cancel()

    # ------------------------------------------------------------------ pieces
    def _choice_index(self, p: int, k: int) -> int:
        return p * self.n + k

    def _steering_obj(self, scores: dict[int, Any], fired: dict[int, bool]) -> SteeringResult:
        vals = {p: v for p, v in scores.items() if v is not None}
        top = max(vals, key=lambda p: vals[p]) if vals else next(iter(scores), None)
        lang = self._langs.get(top) if top is not None else None
        thr = None
        if self.steer_info.vector:
            v = self.rt.vectors.get(self.steer_info.vector)
            if v is not None and self.steer_info.operating_point:
                v = v.at_operating_point(self.steer_info.operating_point)
            # the threshold the (highest-scoring) prompt was compared with: its language's
            thr = v.gate.threshold_for(lang) if v is not None and v.gate is not None else None
        return self.steer_info.model_copy(update={
            "gate_score": max(vals.values()) if vals else None, "threshold": thr,
            "language": lang, "fired": any(fired.values())})

    async def respond(self, request: Request) -> Any:
        if self.req.stream:
            return StreamingResponse(self._stream(request), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        return await self._collect(request)

    # ------------------------------------------------------------------ non-streaming
    async def _collect(self, request: Request) -> Any:
        texts: dict[int, list[str]] = {}
        finish: dict[int, str] = {}
        completion = 0
        scores: dict[int, Any] = {}
        fired: dict[int, bool] = {}
        prompt_tokens = 0
        async for p, ev in self._events(request):
            t = ev["type"]
            if t == "error":
                raise APIError(ev.get("status", 500), ev["message"],
                               code=ev.get("code", "generation_failed"))
            if t == "steering":
                scores[p], fired[p] = ev["score"], ev["fired"]
                self._langs[p] = ev.get("language")
                prompt_tokens += ev["prompt_tokens"]
            elif t == "text":
                texts.setdefault(self._choice_index(p, ev["index"]), []).append(ev["text"])
            elif t == "finish":
                finish[self._choice_index(p, ev["index"])] = ev["reason"]
                completion += ev["tokens"]
        if len(finish) < len(self.prompts) * self.n:  # the client went away
            return JSONResponse(errors.body(499, "client disconnected"), status_code=499)
        choices = [self.flavor.choice(i, "".join(texts.get(i, [])), finish[i])
                   for i in range(len(self.prompts) * self.n)]
        return self.flavor.response(
            id=self.id, object=self.flavor.object, created=self.created,
            model=self.rt.model_name, choices=choices, usage=Usage.of(prompt_tokens, completion),
            steering=self._steering_obj(scores, fired))

    # ------------------------------------------------------------------ streaming
    def _chunk(self, choices: list[BaseModel], **extra: Any) -> str:
        chunk = CompletionChunk(id=self.id, object=self.flavor.chunk_object,
                                created=self.created, model=self.rt.model_name,
                                choices=choices, **extra)
        if self.req.stream_options and self.req.stream_options.include_usage \
                and "usage" not in extra:
            chunk.usage = None  # set (to null), so that it is sent
        body = chunk.model_dump(exclude_unset=True)
        return f"data: {json.dumps(body, allow_nan=False)}\n\n"

    async def _stream(self, request: Request) -> AsyncIterator[str]:
        completion = 0
        prompt_tokens = 0
        scores: dict[int, Any] = {}
        fired: dict[int, bool] = {}
        try:
            async for p, ev in self._events(request):
                t = ev["type"]
                if t == "error":
                    yield "data: " + json.dumps(errors.body(ev.get("status", 500),
                                                            ev["message"])) + "\n\n"
                    break
                if t == "steering":
                    scores[p], fired[p] = ev["score"], ev["fired"]
                    self._langs[p] = ev.get("language")
                    prompt_tokens += ev["prompt_tokens"]
                    steering = self._steering_obj({p: ev["score"]}, {p: ev["fired"]})
                    first = [self.flavor.opening(self._choice_index(p, k), p)
                             for k in range(self.n)]
                    yield self._chunk(first, steering=steering)
                elif t == "text":
                    yield self._chunk([self.flavor.delta(self._choice_index(p, ev["index"]),
                                                   ev["text"])])
                elif t == "finish":
                    completion += ev["tokens"]
                    yield self._chunk([self.flavor.delta(self._choice_index(p, ev["index"]), None,
                                                   finish=ev["reason"])])
            else:
                if self.req.stream_options and self.req.stream_options.include_usage:
                    yield self._chunk([], usage=Usage.of(prompt_tokens, completion),
                                      steering=self._steering_obj(scores, fired))
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()  # a client that went away frees its rows at the next iteration

