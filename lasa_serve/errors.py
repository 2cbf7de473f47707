"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with a status."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
         422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
         503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type_: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or TYPES.get(status, "invalid_request_error")


def body(status: int, message: str, param: str | None = None, code: str | None = None,
         type_: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_ or TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body(status, message, param, code), status_code=status, headers=headers)


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return JSONResponse(body(exc.status, exc.message, exc.param, exc.code, exc.type),
                        status_code=exc.status)


def _union_tag(part: object) -> bool:
    """Whether a location part names a union member (``str``, ``list[TextPart]``) rather
    than a field: the client's field path leaves them out."""
    return isinstance(part, str) and ("[" in part or part.startswith("constrained-")
                                      or part in ("str", "int", "float", "bool"))


def _first_problem(errors: list[Any]) -> dict[str, Any]:
    """The error to report: a union (``stop``: a text or a list of texts) reports one error
    per member; a type mismatch there is usually the member the client did not mean, so
    the first error that is not one is reported when there is such an error."""
    for err in errors:
        if not str(err.get("type", "")).endswith("_type"):
            return err
    return errors[0] if errors else {}


async def validation_handler(request: Request, exc: Exception) -> JSONResponse:
    """Malformed JSON and invalid fields: 400, naming the first offending field."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = _first_problem(errors)
    loc = [str(x) for x in first.get("loc", ()) if x != "body" and not _union_tag(x)]
    if first.get("type") == "json_invalid":
        return error_response(400, f"request body is not valid JSON: {first.get('msg', '')}",
                              param="body", code="invalid_json")
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request")
    code = "invalid_value"
    if first.get("type") == "extra_forbidden" and len(loc) >= 2:
        from .protocol import STRICT_OBJECTS

        model = STRICT_OBJECTS.get(loc[-2])
        known = f"; known keys: {', '.join(model.model_fields)}" if model else ""
        msg, code = f"unknown key {loc[-1]!r}{known}", "unknown_parameter"
    elif first.get("type") == "string_unicode":  # a lone UTF-16 surrogate (serving/text.py)
        msg, code = "a lone UTF-16 surrogate is not valid Unicode text", "invalid_text"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return error_response(400, f"{param or 'body'}: {msg}{more}", param=param, code=code)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(exc.status_code, str(exc.detail), code=code,
                          headers=getattr(exc, "headers", None))


async def unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    return error_response(500, f"internal error: {type(exc).__name__}", code="internal_error")
