"""Errors as HTTP answers, in one place: the web layer's own ``NewsletterError``
subclasses, and the handlers that turn every error (ours, FastAPI's validation errors,
Starlette's HTTP errors, anything unexpected) into a clear page or JSON body.

Server-side failures (5xx) show a generic message on public pages and are logged in
full; the editors' preview shows the real message, since editors must act on it.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from newsletter.errors import NewsletterError
from newsletter.web.context import context
from newsletter.web.security import Forbidden, Unauthorized

log = logging.getLogger("newsletter.web")

__all__ = [
    "BadRequest",
    "Forbidden",
    "LinkNotValid",
    "NotConfigured",
    "NotFound",
    "TooManyRequests",
    "Unauthorized",
    "install",
]


class BadRequest(NewsletterError):
    """A form or body the route cannot use."""


class NotFound(NewsletterError):
    """No such page, issue or token; says nothing about why."""

    status = 404


class LinkNotValid(NotFound):
    """An unsubscribe or confirmation link that is unknown, used or expired."""


class TooManyRequests(NewsletterError):
    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotConfigured(NewsletterError):
    """A feature whose secret is not set in the environment (e.g. the webhook key)."""

    status = 503


_TITLES = {
    400: "Bad request",
    401: "Sign in",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    415: "Unsupported media type",
    422: "Bad request",
    429: "Too many requests",
    502: "Try again later",
    503: "Unavailable",
    500: "Something went wrong",
}
GENERIC_5XX = "The service is temporarily unavailable. Please try again later."


def _wants_json(request: Request) -> bool:
    path = request.url.path
    return (
        path.startswith("/webhooks/")
        or path == "/healthz"
        or path.endswith("/version")
        or "application/json" in request.headers.get("accept", "")
    )


def error_response(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The answer for an error: JSON for machines, the error page for people."""
    if status >= 500 and not request.url.path.startswith("/preview"):
        message = GENERIC_5XX
    if _wants_json(request):
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)
    response = context(request).page(
        request, "error.html", status=status, title=_TITLES.get(status, "Error"), message=message
    )
    response.headers.update(headers or {})
    return response


async def newsletter_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NewsletterError)
    status = exc.status
    headers: dict[str, str] = {}
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(int(exc.retry_after + 0.999))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Basic realm="newsletter preview", charset="UTF-8"'
    if status >= 500:
        log.error("event=error status=%d error=%s message=%r", status, type(exc).__name__, str(exc))
    return error_response(request, status, str(exc), headers)


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    fields = sorted({str(e.get("loc", ("", ""))[-1]) for e in exc.errors()})
    message = f"missing or invalid: {', '.join(fields)}" if fields else "the request is not valid"
    return error_response(request, 400, message)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = {
        404: "There is no page at this address.",
        405: "This page does not accept that method.",
        413: "The request is too large.",
    }.get(exc.status_code, str(exc.detail))
    return error_response(request, exc.status_code, message, dict(exc.headers or {}))


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("event=error status=500 error=%s", type(exc).__name__)
    return error_response(request, 500, "internal error")


def install(app: FastAPI) -> None:
    """Register the handlers: the one mapping from errors to statuses."""
    app.add_exception_handler(NewsletterError, newsletter_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
