"""ASGI middleware around every request: a cap on the body size (413 before a handler
reads too much), security headers, and one structured log line per request that names
the route's pattern instead of its path, so tokens never reach the log.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("newsletter.web.access")

_LONG_SEGMENT = re.compile(r"[^/]{17,}")  # long path segments may be tokens: never log them


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body passes its limit mid-stream. An HTTPException,
    so FastAPI's body parsing lets it through to the error handlers (a 413 page)."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="request body too large")


class BodyLimit:
    """Answer 413 when a request body is over its limit: ``limits`` maps a path prefix to
    bytes (the longest matching prefix wins), ``default`` covers the rest."""

    def __init__(self, app: ASGIApp, default: int, limits: dict[str, int] | None = None) -> None:
        self.app, self.default = app, default
        self.limits = sorted((limits or {}).items(), key=lambda kv: -len(kv[0]))

    def limit_for(self, path: str) -> int:
        return next((n for prefix, n in self.limits if path.startswith(prefix)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                await _plain(send, 400, b"bad Content-Length")
                return
            if too_large:
                await _plain(send, 413, b"request body too large")
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def watch_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watch_send)
        except BodyTooLarge:
            if started:
                raise
            await _plain(send, 413, b"request body too large")
        except BaseExceptionGroup as group:  # anyio task groups wrap it
            if (
                started
                or not group.subgroup(BodyTooLarge)
                or group.subgroup(lambda e: not isinstance(e, (BodyTooLarge, BaseExceptionGroup)))
            ):
                raise
            await _plain(send, 413, b"request body too large")


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


PAGE_POLICY = (
    "default-src 'self'; img-src 'self' https: data:; style-src 'self'; script-src 'self'; "
    "frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Headers every answer gets unless the route set its own: no referrer (tokens sit in
    URLs), no sniffing, a content security policy, no framing by other sites."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in (
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"content-security-policy", PAGE_POLICY.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", b"no-store"),
                ):
                    if name not in present:
                        headers.append((name, value))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, add_headers)


def loggable_path(scope: Scope) -> str:
    """The route's pattern (``/unsubscribe/{token}``) or, unmatched, the path with long
    segments elided; never the query string."""
    route: Any = scope.get("route")
    pattern = getattr(route, "path", None)
    if isinstance(pattern, str):
        return pattern
    return _LONG_SEGMENT.sub("...", str(scope.get("path", ""))[:200])


class RequestLog:
    """One line per request: ``event=request method=GET route=/archive status=200 ...``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            client = scope.get("client")
            fields = {
                "event": "request",
                "method": scope.get("method", ""),
                "route": loggable_path(scope),
                "status": status,
                "ms": round((time.perf_counter() - start) * 1000, 1),
                "client": client[0] if client else "-",
            }
            log.info(
                " ".join(
                    f"{k}={json.dumps(v) if isinstance(v, str) and (' ' in v or not v) else v}"
                    for k, v in fields.items()
                )
            )
