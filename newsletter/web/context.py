"""What every route needs, created once per app by ``create_app``: the settings, the
database (opened on first use), the sender, the clock, the CSRF signer, the sign-up and
preferences rate limiters and the page templates. Routes reach it through ``context(request)``.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Engine

from newsletter.config import Settings
from newsletter.senders.base import Sender
from newsletter.web.security import CsrfSigner, EditorGate, RateLimiter

Clock = Callable[[], dt.datetime]
TEMPLATES = Path(__file__).resolve().parent / "templates"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def page_environment() -> jinja2.Environment:
    """The Jinja2 environment for the web pages (HTML-escaped, strict)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )


@dataclass
class WebContext:
    settings: Settings
    csrf: CsrfSigner
    limiter: RateLimiter
    editors: EditorGate
    clock: Clock = utcnow
    # the preferences page's actions, per client address (see web.preferences_rate_per_hour)
    actions: RateLimiter = field(default_factory=lambda: RateLimiter(30))
    engine_given: Engine | None = None
    sender_given: Sender | None = None
    pages: jinja2.Environment = field(default_factory=page_environment)
    _engine: Engine | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def engine(self) -> Engine:
        """The database, opened (and checked) on first use."""
        if self.engine_given is not None:
            return self.engine_given
        with self._lock:
            if self._engine is None:
                from newsletter.store.db import open_database

                self._engine = open_database(self.settings)
            return self._engine

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    @contextmanager
    def sender(self) -> Iterator[Sender]:
        """The sender given to ``create_app``, or the configured one for this call."""
        from newsletter.senders import sender_for

        with sender_for(self.settings, self.sender_given) as sender:
            yield sender

    def page(self, request: Request, template: str, /, status: int = 200, **values: Any) -> HTMLResponse:
        """Render the page ``template``; every page gets the publication and the request."""
        html = self.pages.get_template(template).render(pub=self.settings.publication, request=request, **values)
        return HTMLResponse(html, status_code=status)


def context(request: Request) -> WebContext:
    found: WebContext = request.app.state.context
    return found
