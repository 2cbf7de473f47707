"""The FastAPI app: OpenAI-compatible endpoints over a :class:`~lasa_serve.runtime.Runtime`."""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lasa_steer import LasaError
from lasa_steer.errors import VectorNameError
from lasa_steer.capture import gate_scores
from lasa_steer.prompts import format_prompt

from . import errors
from .errors import APIError
from .generation import Generation
from .middleware import GuardMiddleware
from .runtime import Runtime
from .protocol import ChatCompletionRequest, CompletionRequest, ErrorResponse, ModerationRequest

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
        spec = Generation(rt, req, [ids], max_tokens, "chat.completion")
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
        spec = Generation(rt, req, all_ids, req.max_tokens, "text_completion",
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
