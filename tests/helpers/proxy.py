"""A reverse proxy for tests, behaving like nginx's ``proxy_pass``: it rewrites Host to
the upstream's ``host:port`` (nginx's default ``proxy_set_header Host $proxy_host``),
adds X-Forwarded-For and X-Forwarded-Proto when asked (the usual proxy config), and
passes everything else through, redirects included."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


@dataclass
class Proxy:
    url: str
    forwarded: bool


def _handler(upstream_host: str, upstream_port: int, forwarded: bool) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Host"] = f"{upstream_host}:{upstream_port}"
            if forwarded:
                previous = self.headers.get("x-forwarded-for")
                client = self.client_address[0]
                headers["X-Forwarded-For"] = f"{previous}, {client}" if previous else client
                headers["X-Forwarded-Proto"] = "https"
            connection = http.client.HTTPConnection(upstream_host, upstream_port, timeout=30)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
            finally:
                connection.close()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_HEAD = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Forward


@contextmanager
def reverse_proxy(upstream_host: str, upstream_port: int, *, forwarded: bool = True) -> Iterator[Proxy]:
    """A proxy on a free loopback port in a thread, for the ``with`` block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream_host, upstream_port, forwarded))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Proxy(url=f"http://127.0.0.1:{server.server_address[1]}", forwarded=forwarded)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
