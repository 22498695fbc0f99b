"""The app factory: ``create_app(settings)`` wires the routes (public pages, SendGrid
webhook, editors' preview, ``/healthz``), the error handlers and the middleware around
one ``WebContext``. Tests build the app here and drive it in-process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine, text
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.senders.base import Sender
from newsletter.web import feed, preferences, preview, problems, public, reports, tracking, webhook
from newsletter.web.context import Clock, WebContext, context, utcnow
from newsletter.web.issues import BuildCache
from newsletter.web.middleware import BodyLimit, RequestLog, SecurityHeaders
from newsletter.web.security import CsrfSigner, EditorGate, RateLimiter, is_loopback

STATIC = Path(__file__).resolve().parent / "static"
MIN_SECRET_LENGTH = 32


def secret_key(settings: Settings) -> str:
    """The key that signs CSRF tokens, from the environment; long enough to matter."""
    key = settings.secret(settings.web.secret_key_env, "the web secret key")
    if len(key) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"{settings.config_path}: the web secret key in {settings.web.secret_key_env} is shorter than "
            f'{MIN_SECRET_LENGTH} characters (make one with: python -c "import secrets; '
            'print(secrets.token_urlsafe(32))")'
        )
    return key


def editor_gate(settings: Settings) -> EditorGate:
    """The preview's credentials, read from the environment (never from the file); open
    without them only in ``local`` mode on a loopback bind (see ``EditorGate``)."""
    auth = settings.web.preview

    def optional(env: str | None, what: str) -> str | None:
        try:
            return settings.secret(env, what) if env else None
        except ConfigError:
            return None

    return EditorGate(
        open_locally=auth.access == "local" and is_loopback(settings.web.host),
        token=optional(auth.token_env, "the preview token"),
        username=auth.username,
        password=optional(auth.password_env, "the preview password"),
    )


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    sender: Sender | None = None,
    clock: Clock | None = None,
    secret: str | None = None,
) -> FastAPI:
    """The web app for ``settings``. ``engine`` and ``sender`` default to the configured
    database (opened on first use) and sender; ``secret`` to the key in the environment
    (a ConfigError when it is missing: the public forms cannot be made safe without it)."""
    ctx = WebContext(
        settings=settings,
        csrf=CsrfSigner(secret if secret is not None else secret_key(settings)),
        limiter=RateLimiter(settings.web.subscribe_rate_per_hour),
        editors=editor_gate(settings),
        clock=clock or utcnow,
        actions=RateLimiter(settings.web.preferences_rate_per_hour),
        engine_given=engine,
        sender_given=sender,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.close()

    app = FastAPI(
        title=f"{settings.publication.name} newsletter", version="1", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.context = ctx
    app.state.builds = BuildCache(settings)
    app.state.feed = feed.FeedCache()
    app.state.webhook = webhook.verifier(settings)
    problems.install(app)
    app.include_router(feed.router)  # before public's /archive/{slug}
    app.include_router(public.router)
    app.include_router(preferences.router)
    app.include_router(webhook.router)
    app.include_router(preview.router)
    app.include_router(reports.router)
    app.include_router(tracking.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/subscribe", status_code=303)

    @app.get("/healthz", summary="Liveness and database check")
    def healthz(request: Request) -> JSONResponse:
        with context(request).engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return JSONResponse({"status": "ok"})

    app.add_middleware(SecurityHeaders)
    app.add_middleware(
        BodyLimit,
        default=settings.web.max_form_bytes,
        limits={"/webhooks/": settings.web.sendgrid_webhook.max_body_bytes},
    )
    app.add_middleware(RequestLog)
    if settings.web.trusted_proxies:
        # outermost: every layer sees the client the trusted proxy names, and a request
        # from anywhere else keeps its own address whatever X-Forwarded-For claims
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.web.trusted_proxies))
    return app
