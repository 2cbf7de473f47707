"""The FastAPI app: OpenAI-compatible endpoints over a :class:`~server.runtime.Runtime`."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lasa_steer import LasaError, RowSteering, SteeringConfigError
from lasa_steer.capture import gate_scores
from lasa_steer.prompts import format_prompt

from . import errors
from .errors import APIError
from .middleware import GuardMiddleware
from .runtime import Runtime
from .sampling import make_sampler
from .scheduler import Job
from .schemas import (ChatCompletionRequest, CompletionRequest, ErrorResponse,
                      ModerationRequest, Steering, _Sampling)
from .vectors import VectorNameError

log = logging.getLogger("lasa.server")
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 404, 413)}


def create_app(rt: Runtime) -> FastAPI:
    app = FastAPI(title="lasa-steer", version="0.1.0",
                  description="OpenAI-compatible server with language-agnostic safety steering")
    app.state.runtime = rt
    app.add_exception_handler(APIError, errors.api_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_handler)
    app.add_exception_handler(StarletteHTTPException, errors.http_error_handler)
    app.add_exception_handler(Exception, errors.unexpected_handler)
    app.add_middleware(GuardMiddleware, runtime=rt)
    _document_model_enum(app, rt)

    # ----------------------------------------------------------------- plain endpoints
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": rt.model_name, "default_vector": rt.default_vector,
                **rt.scheduler.load()}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(rt.metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", responses=ERRORS)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(rt)]}

    @app.get("/v1/models/{model_id}", responses=ERRORS)
    async def model(model_id: str) -> dict[str, Any]:
        _check_model(rt, model_id)
        return _model_card(rt)

    # ----------------------------------------------------------------- steering vectors
    @app.get("/v1/steering/vectors", responses=ERRORS)
    async def vectors() -> dict[str, Any]:
        data = [{**rt.vectors.describe(n), "default": n == rt.default_vector}
                for n in rt.vectors.names()]
        return {"object": "list", "data": data}

    @app.post("/v1/steering/vectors/{name}/load", responses={**ERRORS, 403: ERRORS[400]})
    async def load_vector(name: str, request: Request) -> dict[str, Any]:
        _check_admin(rt, request)
        try:
            await asyncio.to_thread(rt.vectors.load, name)
        except VectorNameError as exc:
            raise APIError(400, str(exc), param="name", code="invalid_vector_name") from exc
        except FileNotFoundError as exc:
            raise APIError(404, str(exc), param="name", code="vector_not_found") from exc
        except LasaError as exc:
            raise APIError(400, f"vector {name!r} rejected, the previous version (if any) "
                           f"keeps serving: {exc}", param="name",
                           code="invalid_vector_file") from exc
        log.info("vector %s (re)loaded by an admin request", name)
        if rt.default_vector is None:
            rt.default_vector = name
        return {**rt.vectors.describe(name), "default": name == rt.default_vector,
                "status": "loaded"}

    # ----------------------------------------------------------------- moderation
    @app.post("/v1/moderations", responses=ERRORS)
    async def moderations(req: ModerationRequest) -> dict[str, Any]:
        inputs = [req.input] if isinstance(req.input, str) else list(req.input)
        if not inputs:
            raise APIError(400, "input: give at least one text", param="input")
        if len(inputs) > rt.config.max_moderation_inputs:
            raise APIError(400, f"input: at most {rt.config.max_moderation_inputs} texts per "
                           "request", param="input")
        name = req.model if req.model and req.model != rt.model_name else rt.default_vector
        vector = rt.vectors.get(name) if name else None
        if vector is None:
            raise APIError(404, f"model {req.model!r}: no such model or vector (moderation "
                           f"uses a vector's gate; vectors: {rt.vectors.names()})",
                           param="model", code="model_not_found")
        if vector.gate is None:
            raise APIError(400, f"vector {name!r} has no gate", param="model")
        for i, text in enumerate(inputs):
            n = len(rt.tok(text, add_special_tokens=False)["input_ids"])
            if n + 64 > rt.context:
                raise APIError(400, f"input[{i}]: {n} tokens exceed the context window of "
                               f"{rt.context} tokens", param="input",
                               code="context_length_exceeded")
        fut = rt.scheduler.call(lambda: gate_scores(rt.model, rt.tok, vector, inputs))
        scores, flagged = await asyncio.wrap_future(fut)
        thr = vector.gate.threshold
        results = [{"flagged": bool(f), "categories": {"harmful": bool(f)},
                    "category_scores": {"harmful": float(s)}, "score": float(s),
                    "threshold": thr} for s, f in zip(scores.tolist(), flagged.tolist())]
        rt.metrics.gate_scored(len(results), sum(r["flagged"] for r in results))
        return {"id": f"modr-{uuid.uuid4().hex}", "model": name, "results": results}

    # ----------------------------------------------------------------- generation
    @app.post("/v1/chat/completions", responses=ERRORS)
    async def chat(req: ChatCompletionRequest, request: Request) -> Any:
        _check_model(rt, req.model)
        if req.logprobs or req.top_logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        if req.tools:
            raise APIError(400, "tools are not supported by this server", param="tools")
        messages = []
        for i, m in enumerate(req.messages):
            if isinstance(m.content, list):
                parts = []
                for k, part in enumerate(m.content):
                    if part.type != "text" or part.text is None:
                        raise APIError(400, f"messages[{i}].content[{k}]: only text parts are "
                                       "supported", param=f"messages.{i}.content")
                    parts.append(part.text)
                content = "".join(parts)
            else:
                content = m.content or ""
            role = "system" if m.role == "developer" else m.role
            messages.append({"role": role, "content": content})
        try:
            text = format_prompt(rt.tok, messages, chat=True)
        except Exception as exc:  # template rules (e.g. role order) are the model's own
            raise APIError(400, f"messages: the model's chat template rejected them: {exc}",
                           param="messages") from exc
        ids = rt.tok(text, add_special_tokens=False)["input_ids"]
        max_tokens = req.max_completion_tokens or req.max_tokens
        spec = _Spec(rt, req, [ids], max_tokens, "chat.completion")
        return await spec.respond(request)

    @app.post("/v1/completions", responses=ERRORS)
    async def completions(req: CompletionRequest, request: Request) -> Any:
        _check_model(rt, req.model)
        if req.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        if req.suffix:
            raise APIError(400, "suffix is not supported by this server", param="suffix")
        p = req.prompt
        if isinstance(p, str):
            prompts: list[Any] = [p]
        elif p and all(isinstance(x, int) for x in p):
            prompts = [p]
        else:
            prompts = list(p)
        if not prompts:
            raise APIError(400, "prompt: give at least one prompt", param="prompt")
        vocab = int(getattr(rt.model.config, "vocab_size", 0) or len(rt.tok))
        all_ids, texts = [], []
        for i, item in enumerate(prompts):
            if isinstance(item, str):
                ids = rt.tok(item, add_special_tokens=False)["input_ids"]
                texts.append(item)
            else:
                if any((not isinstance(t, int)) or t < 0 or t >= vocab for t in item):
                    raise APIError(400, f"prompt[{i}]: token ids must lie in 0..{vocab - 1}",
                                   param="prompt")
                ids = list(item)
                texts.append(rt.tok.decode(ids))
            if not ids:
                bos = rt.tok.bos_token_id
                if bos is None:
                    raise APIError(400, f"prompt[{i}] is empty", param="prompt")
                ids = [int(bos)]
            all_ids.append(ids)
        spec = _Spec(rt, req, all_ids, req.max_tokens, "text_completion",
                     echo=texts if req.echo else None)
        return await spec.respond(request)

    return app


# --------------------------------------------------------------------- helpers
def _document_model_enum(app: FastAPI, rt: Runtime) -> None:
    """The schema says which model id this server accepts (the one it serves)."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base()
            for name in ("ChatCompletionRequest", "CompletionRequest"):
                props = schema.get("components", {}).get("schemas", {}).get(name, {}).get(
                    "properties", {})
                if "model" in props:
                    props["model"]["enum"] = [rt.model_name]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _model_card(rt: Runtime) -> dict[str, Any]:
    return {"id": rt.model_name, "object": "model", "created": 0, "owned_by": "lasa-steer",
            "context_window": rt.context}


def _check_model(rt: Runtime, name: str) -> None:
    if name != rt.model_name:
        raise APIError(404, f"model {name!r} does not exist; this server serves "
                       f"{rt.model_name!r}", param="model", code="model_not_found")


def _check_admin(rt: Runtime, request: Request) -> None:
    key = rt.config.admin_key or rt.config.api_key
    if not key:
        raise APIError(403, "admin actions are disabled: start the server with --admin-key "
                       "(or --api-key)", code="admin_disabled")
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise APIError(401, "admin key required (Authorization: Bearer <admin key>)",
                       code="invalid_api_key")


def _steering(rt: Runtime, s: Optional[Steering]) -> tuple[RowSteering, dict[str, Any], bool]:
    """Resolve the request's steering field against the server defaults.

    Returns the row settings, the response's ``steering`` object (without gate results) and
    whether the action is 'prefix'."""
    s = s or Steering()
    c = rt.config
    mode = s.mode or c.default_mode
    name = s.vector or rt.default_vector
    if s.vector is not None or (mode != "off" and name is not None):
        vector = rt.vectors.get(name) if name else None
        if vector is None:
            raise APIError(404, f"steering.vector {name!r}: no such vector; loaded: "
                           f"{rt.vectors.names()}", param="steering.vector",
                           code="vector_not_found")
    else:
        vector = None
    if vector is None or mode == "off":
        info = {"vector": name if vector is not None else None, "mode": "off",
                "action": None, "strength": 0.0}
        return RowSteering(mode="off"), info, False
    action = s.action or c.default_action or vector.default_action
    if action == "prefix":
        if mode == "gate" and vector.gate is None:
            raise APIError(400, f"steering.mode 'gate': vector {name!r} has no gate",
                           param="steering.mode")
        return (RowSteering(vector=vector, mode=mode, strength=0.0),
                {"vector": name, "mode": mode, "action": "prefix", "strength": None}, True)
    strength = s.strength if s.strength is not None else (
        c.default_strength if action == vector.default_action else None)
    try:
        row = RowSteering(vector=vector, strength=strength, mode=mode, action=action,
                          direction=s.direction).resolved()
    except SteeringConfigError as exc:
        raise APIError(400, f"steering: {exc}", param="steering") from exc
    return row, {"vector": name, "mode": mode, "action": action, "direction": row.direction,
                 "strength": row.strength}, False


class _Spec:
    """One generation request (chat or text completion), possibly several prompts."""

    def __init__(self, rt: Runtime, req: _Sampling, prompts: list[list[int]],
                 max_tokens: int | None, kind: str, echo: list[str] | None = None):
        self.rt, self.req, self.kind, self.echo = rt, req, kind, echo
        self.id = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.n = req.n or 1
        if self.n > min(rt.config.max_n, rt.config.max_batch):
            raise APIError(400, f"n={self.n}: at most {min(rt.config.max_n, rt.config.max_batch)}"
                           " choices per request", param="n")
        if len(prompts) * self.n > rt.config.max_batch:
            raise APIError(400, f"{len(prompts)} prompts x n={self.n} exceed the batch limit of "
                           f"{rt.config.max_batch} rows", param="prompt")
        self.row, self.steer_info, prefix = _steering(rt, req.steering)
        self.prefix_ids = rt.tok(rt.config.prefix_text, add_special_tokens=False)["input_ids"] \
            if prefix else None
        extra = len(self.prefix_ids or [])
        self.max_tokens: list[int] = []
        for i, ids in enumerate(prompts):
            room = rt.context - len(ids) - extra
            if room < 1:
                raise APIError(400, f"this model's context window is {rt.context} tokens; the "
                               f"prompt{f'[{i}]' if len(prompts) > 1 else ''} has {len(ids)} "
                               f"tokens{' plus the safety prefix' if extra else ''}, leaving no "
                               "room to generate", param="messages" if kind ==
                               "chat.completion" else "prompt", code="context_length_exceeded")
            want = max_tokens if max_tokens is not None else rt.config.default_max_tokens
            if rt.config.max_tokens_limit:
                want = min(want, rt.config.max_tokens_limit)
            self.max_tokens.append(min(want, room))
        self.prompts = prompts
        self.temperature = 1.0 if req.temperature is None else req.temperature
        self.top_p = 1.0 if req.top_p is None else req.top_p
        self.stops = req.stops()
        self.jobs: list[Job] = []

    # ------------------------------------------------------------------ submission
    def _submit(self, emit: Callable[[int, list[dict]], None]) -> None:
        for p, ids in enumerate(self.prompts):
            seeds = [None if self.req.seed is None else self.req.seed + k for k in range(self.n)]
            job = Job(id=f"{self.id}-{p}", prompt_ids=ids, max_tokens=self.max_tokens[p],
                      samplers=[make_sampler(self.temperature, self.top_p, s) for s in seeds],
                      emit=lambda evs, p=p: emit(p, evs), steering=self.row,
                      prefix_ids=self.prefix_ids, stop=self.stops)
            self.jobs.append(job)
        for job in self.jobs:
            self.rt.scheduler.submit(job)

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
        try:
            while open_jobs:
                try:
                    p, evs = await asyncio.wait_for(queue.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                for ev in evs:
                    if ev["type"] in ("done", "error"):
                        open_jobs -= 1
                    yield p, ev
        finally:
            self.cancel()

    # ------------------------------------------------------------------ pieces
    def _choice_index(self, p: int, k: int) -> int:
        return p * self.n + k

    def _steering_obj(self, scores: dict[int, Any], fired: dict[int, bool]) -> dict[str, Any]:
        vals = [v for v in scores.values() if v is not None]
        thr = None
        if self.steer_info["vector"]:
            v = self.rt.vectors.get(self.steer_info["vector"])
            thr = v.gate.threshold if v is not None and v.gate is not None else None
        return {**self.steer_info, "gate_score": max(vals) if vals else None,
                "threshold": thr, "fired": any(fired.values())}

    def _usage(self, prompt_tokens: int, completion: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}

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
                raise APIError(ev.get("status", 500), ev["message"], code="generation_failed")
            if t == "steering":
                scores[p], fired[p] = ev["score"], ev["fired"]
                prompt_tokens += ev["prompt_tokens"]
            elif t == "text":
                texts.setdefault(self._choice_index(p, ev["index"]), []).append(ev["text"])
            elif t == "finish":
                finish[self._choice_index(p, ev["index"])] = ev["reason"]
                completion += ev["tokens"]
        if len(finish) < len(self.prompts) * self.n:  # the client went away
            return JSONResponse(errors.body(499, "client disconnected"), status_code=499)
        choices = []
        for i in range(len(self.prompts) * self.n):
            text = "".join(texts.get(i, []))
            if self.kind == "chat.completion":
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "logprobs": None, "finish_reason": finish[i]})
            else:
                if self.echo is not None:
                    text = self.echo[i // self.n] + text
                choices.append({"index": i, "text": text, "logprobs": None,
                                "finish_reason": finish[i]})
        return {"id": self.id, "object": self.kind, "created": self.created,
                "model": self.rt.model_name, "choices": choices,
                "usage": self._usage(prompt_tokens, completion),
                "steering": self._steering_obj(scores, fired)}

    # ------------------------------------------------------------------ streaming
    def _chunk(self, choices: list[dict], **extra: Any) -> str:
        obj = {"id": self.id, "object": self.kind + ".chunk" if self.kind == "chat.completion"
               else self.kind, "created": self.created, "model": self.rt.model_name,
               "choices": choices, **extra}
        if self.req.stream_options and self.req.stream_options.include_usage \
                and "usage" not in obj:
            obj["usage"] = None
        return f"data: {json.dumps(obj, allow_nan=False)}\n\n"

    def _delta(self, i: int, text: str | None, finish: str | None = None,
               first: bool = False) -> dict:
        if self.kind == "chat.completion":
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}

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
                    prompt_tokens += ev["prompt_tokens"]
                    steering = self._steering_obj({p: ev["score"]}, {p: ev["fired"]})
                    first = []
                    for k in range(self.n):
                        i = self._choice_index(p, k)
                        echo = self.echo[p] if self.echo is not None else None
                        first.append(self._delta(i, "" if self.kind == "chat.completion"
                                                 else (echo or ""), first=True))
                    yield self._chunk(first, steering=steering)
                elif t == "text":
                    yield self._chunk([self._delta(self._choice_index(p, ev["index"]),
                                                   ev["text"])])
                elif t == "finish":
                    completion += ev["tokens"]
                    yield self._chunk([self._delta(self._choice_index(p, ev["index"]), None,
                                                   finish=ev["reason"])])
            else:
                if self.req.stream_options and self.req.stream_options.include_usage:
                    yield self._chunk([], usage=self._usage(prompt_tokens, completion),
                                      steering=self._steering_obj(scores, fired))
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()  # a client that went away frees its rows at the next iteration

