"""The FastAPI app: OpenAI-compatible endpoints over a :class:`~lasa_serve.runtime.Runtime`."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lasa_steer import LasaError
from lasa_steer.errors import VectorNameError

from . import errors
from .errors import APIError
from .middleware import GuardMiddleware
from .runtime import Runtime
from .protocol import (ChatCompletionRequest, CompletionRequest, ErrorResponse, ModelCard,
                       ModelList, ModerationRequest, ModerationResponse)
from .serving.chat import ChatFlavor, chat_prompt
from .serving.completion import TextFlavor, completion_prompts
from .serving.generation import Generation
from .serving.moderation import moderate
from .vectors import NAME_MAX, NAME_PATTERN

log = logging.getLogger("lasa.server")
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 404, 413)}


def create_app(rt: Runtime) -> FastAPI:
    """The app: error handlers, the guard middleware and every route."""
    app = FastAPI(title="lasa-steer", version="0.1.0",
                  description="OpenAI-compatible server with language-agnostic safety steering")
    app.state.runtime = rt
    app.add_exception_handler(APIError, errors.api_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_handler)
    app.add_exception_handler(StarletteHTTPException, errors.http_error_handler)
    app.add_exception_handler(Exception, errors.unexpected_handler)
    app.add_middleware(GuardMiddleware, runtime=rt)
    _document_config(app, rt)
    _info_routes(app, rt)
    _vector_routes(app, rt)
    _api_routes(app, rt)
    return app


def _info_routes(app: FastAPI, rt: Runtime) -> None:
    @app.get("/health")
    async def health() -> Any:
        alive = rt.backend.alive()
        body = {"status": "ok" if alive else "engine_dead", "model": rt.model_name,
                "steering": "on" if rt.steering_on else "off",
                "default_vector": rt.default_vector, **rt.backend.load()}
        return body if alive else JSONResponse(body, status_code=503)

    # load balancers probe with HEAD (outside the schema: one operation per path and name)
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(rt.metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", responses=ERRORS)
    async def models() -> ModelList:
        return ModelList(data=[_model_card(rt)])

    @app.get("/v1/models/{model_id}", responses=ERRORS)
    async def model(model_id: str) -> ModelCard:
        _check_model(rt, model_id)
        return _model_card(rt)


def _vector_routes(app: FastAPI, rt: Runtime) -> None:
    @app.get("/v1/steering/vectors", responses=ERRORS)
    async def vectors() -> dict[str, Any]:
        data = [{**rt.vectors.describe(n), "default": n == rt.default_vector}
                for n in rt.vectors.names()]
        return {"object": "list", "data": data}

    @app.post("/v1/steering/vectors/{name}/load", responses={**ERRORS, 403: ERRORS[400]})
    async def load_vector(name: Annotated[str, Path(max_length=NAME_MAX, pattern=NAME_PATTERN)],
                          request: Request) -> dict[str, Any]:
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


def _api_routes(app: FastAPI, rt: Runtime) -> None:
    @app.post("/v1/moderations", responses=ERRORS)
    async def moderations(req: ModerationRequest) -> ModerationResponse:
        return await moderate(rt, req)

    # ----------------------------------------------------------------- generation
    @app.post("/v1/chat/completions", responses=ERRORS)
    async def chat(req: ChatCompletionRequest, request: Request) -> Any:
        _check_model(rt, req.model)
        ids = chat_prompt(rt, req)
        max_tokens = req.max_completion_tokens or req.max_tokens
        return await Generation(rt, req, [ids], max_tokens, ChatFlavor()).respond(request)

    @app.post("/v1/completions", responses=ERRORS)
    async def completions(req: CompletionRequest, request: Request) -> Any:
        _check_model(rt, req.model)
        all_ids, texts = completion_prompts(rt, req)
        flavor = TextFlavor(texts if req.echo else None, req.n or 1)
        return await Generation(rt, req, all_ids, req.max_tokens, flavor).respond(request)


# --------------------------------------------------------------------- helpers
def _document_config(app: FastAPI, rt: Runtime) -> None:
    """The schema says what this server's configuration accepts: the model id it serves,
    the most choices (``--max-n``, ``--max-batch``), prompts (``--max-batch``) and
    moderation inputs (``--max-moderation-inputs``) per request, and the token ids of its
    vocabulary."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base()
            _configure_schema(schema, rt)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _branches(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return list(prop.get("anyOf", ())) or [prop]


def _configure_schema(schema: dict[str, Any], rt: Runtime) -> None:
    models = schema.get("components", {}).get("schemas", {})
    c = rt.config
    choices = min(c.max_n, c.max_batch)
    vocab = rt.vocab_size
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = models.get(name, {}).get("properties", {})
        if "model" in props:
            props["model"]["enum"] = [rt.model_name]
        for branch in _branches(props.get("n", {})):
            if branch.get("type") == "integer":
                branch["maximum"] = choices
    for branch in _branches(models.get("CompletionRequest", {}).get("properties", {}).get(
            "prompt", {})):
        if branch.get("type") != "array":
            continue
        items = branch.get("items", {})
        if items.get("type") == "integer":  # one token prompt
            items["maximum"] = vocab - 1
        elif items.get("type") == "array":  # several token prompts
            branch["maxItems"] = c.max_batch
            items.get("items", {})["maximum"] = vocab - 1
        else:  # several text prompts
            branch["maxItems"] = c.max_batch
    moderation = models.get("ModerationRequest", {}).get("properties", {}).get("input", {})
    for branch in _branches(moderation):
        if branch.get("type") == "array":
            branch["maxItems"] = c.max_moderation_inputs
    card = schema.get("paths", {}).get("/v1/models/{model_id}", {}).get("get", {})
    for param in card.get("parameters", ()):
        if param.get("name") == "model_id":
            param["schema"]["enum"] = [rt.model_name]


def _model_card(rt: Runtime) -> ModelCard:
    return ModelCard(id=rt.model_name, context_window=rt.context,
                     steering="on" if rt.steering_on else "off")


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
