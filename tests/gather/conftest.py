"""Fixtures for gather: a real HTTP server on 127.0.0.1 whose routes a test defines (status,
headers, body, redirects, validators, slowness), and settings pointed at it."""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from newsletter.config import Settings, load_settings

AS_OF = dt.datetime(2024, 10, 25, 21, 0, tzinfo=dt.UTC)


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str | None = "application/rss+xml; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    gzip: bool = False
    send_length: bool = True
    delay: float = 0.0  # seconds before the first byte
    drip: float = 0.0  # seconds between 1 KB chunks


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


class FeedServer:
    """A ThreadingHTTPServer serving ``routes``; ``seen`` records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self.release = threading.Event()  # set at teardown so slow handlers finish at once
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
                # the client may give up (timeouts, size cap): that is the point
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                    server.respond(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, body: bytes | str = b"", **options: Any) -> str:
        raw = body.encode("utf-8") if isinstance(body, str) else body
        self.routes[path] = Route(body=raw, **options)
        return self.url(path)

    def redirect(self, path: str, to: str, status: int = 302) -> str:
        self.routes[path] = Route(status=status, headers={"Location": to}, content_type=None)
        return self.url(path)

    def respond(self, handler: BaseHTTPRequestHandler) -> None:
        route = self.routes.get(handler.path.split("?", 1)[0])
        if route is None:
            route = Route(status=404, body=b"not found", content_type="text/plain")
        if route.delay:
            self.release.wait(route.delay)
        status = route.status
        validated = (route.etag and handler.headers.get("If-None-Match") == route.etag) or (
            route.last_modified and handler.headers.get("If-Modified-Since") == route.last_modified
        )
        if status == 200 and validated:
            status = 304
        body = b"" if status == 304 else route.body
        if route.gzip and body:
            body = gzip.compress(body)
        handler.send_response(status)
        if route.content_type and status != 304:
            handler.send_header("Content-Type", route.content_type)
        if route.gzip and body:
            handler.send_header("Content-Encoding", "gzip")
        if route.etag:
            handler.send_header("ETag", route.etag)
        if route.last_modified:
            handler.send_header("Last-Modified", route.last_modified)
        for name, value in route.headers.items():
            handler.send_header(name, value)
        if route.send_length or status == 304:
            handler.send_header("Content-Length", str(len(body)))
        else:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        if route.drip:
            for start in range(0, len(body), 1024):
                if self.release.is_set():
                    return
                handler.wfile.write(body[start : start + 1024])
                handler.wfile.flush()
                self.release.wait(route.drip)
        else:
            handler.wfile.write(body)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def roundup_xml(fixtures_dir: Path) -> bytes:
    return (fixtures_dir / "feeds" / "roundup.rss").read_bytes()


@pytest.fixture
def latest_xml(fixtures_dir: Path) -> bytes:
    return (fixtures_dir / "feeds" / "latest.atom").read_bytes()


@pytest.fixture
def gather_settings(write_config: Callable[..., Path]) -> Callable[..., Settings]:
    """Settings for the temporary project with ``sources`` (and more) overridden."""

    def make(sources: dict[str, Any] | None = None, **overrides: Any) -> Settings:
        data: dict[str, Any] = dict(overrides)
        if sources is not None:
            data["sources"] = sources
        return load_settings(write_config(data), env={})

    return make


@pytest.fixture
def served_settings(
    feed_server: FeedServer,
    roundup_xml: bytes,
    latest_xml: bytes,
    gather_settings: Callable[..., Settings],
) -> Callable[..., Settings]:
    """Settings whose round-up and teaser feeds come from the local HTTP server."""
    roundup_url = feed_server.add("/feeds/diplomacy-watch.rss", roundup_xml)
    latest_url = feed_server.add("/feeds/latest.atom", latest_xml, content_type="application/atom+xml")

    def make(
        roundup: dict[str, Any] | None = None,
        teasers: dict[str, Any] | None = None,
        **sources: Any,
    ) -> Settings:
        return gather_settings(
            {
                "roundup": {"feed": roundup_url, **(roundup or {})},
                "teasers": {"feeds": [latest_url], **(teasers or {})},
                "fetch": {"timeout_seconds": 2, **sources.pop("fetch", {})},
                **sources,
            }
        )

    return make
