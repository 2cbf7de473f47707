"""A pure ASGI guard in front of the app: body size limit (413), API key (401) and
per-request metrics. Pure ASGI (not ``BaseHTTPMiddleware``) so that streaming responses
and client disconnects pass straight through."""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from .errors import body

log = logging.getLogger("lasa.server")
OPEN_PATHS = {"/health", "/metrics"}
KNOWN_PATHS = {"/health", "/metrics", "/v1/models", "/v1/chat/completions",
               "/v1/completions", "/v1/moderations", "/v1/steering/vectors"}


def _label(path: str) -> str:
    if path in KNOWN_PATHS:
        return path
    if path.startswith("/v1/steering/vectors/"):
        return "/v1/steering/vectors/{name}/load"
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return "other"


class GuardMiddleware:
    def __init__(self, app: Any, runtime: Any):
        self.app = app
        self.rt = runtime

    async def _reply(self, send: Any, status: int, message: str, code: str,
                     headers: list[tuple[bytes, bytes]] | None = None,
                     param: str | None = None) -> None:
        payload = json.dumps(body(status, message, param=param, code=code)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]
                    + (headers or [])})
        await send({"type": "http.response.body", "body": payload})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        path = scope.get("path", "")
        status_box = [500, 0]  # status, whether the response has started

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_box[:] = [int(message["status"]), 1]
            await send(message)

        try:
            await self._guarded(scope, receive, send_wrapper, path)
        except Exception as exc:
            # Answer here rather than let Starlette's outermost handler re-raise, which makes
            # the server drop the client's keep-alive connection along with the request.
            if status_box[1]:
                raise
            log.exception("unexpected error on %s", path)
            await self._reply(send_wrapper, 500, f"internal error: {type(exc).__name__}",
                              "internal_error")
        finally:
            self.rt.metrics.request(_label(path), status_box[0], time.monotonic() - start)

    async def _guarded(self, scope: dict, receive: Any, send: Any, path: str) -> None:
        key = self.rt.config.api_key
        if key and path not in OPEN_PATHS and not path.startswith("/v1/steering/vectors/"):
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                await self._reply(send, 401, "invalid or missing API key (send "
                                  "'Authorization: Bearer <key>')", "invalid_api_key",
                                  [(b"www-authenticate", b"Bearer")])
                return
        limit = self.rt.config.max_body_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                too_big = False
            if too_big:
                await self._reply(send, 413, f"request body exceeds {limit} bytes",
                                  "body_too_large")
                return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        # Read the whole body up front (bounded), then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._reply(send, 413, f"request body exceeds {limit} bytes",
                                  "body_too_large")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        try:  # JSON is UTF-8 (RFC 8259); json.loads would also guess UTF-16/32
            b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError as exc:
            await self._reply(send, 400, f"request body is not valid JSON: byte {exc.start} "
                              "is not UTF-8 text", "invalid_json", param="body")
            return
        replayed = [False]

        async def replay() -> dict:
            if not replayed[0]:
                replayed[0] = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
