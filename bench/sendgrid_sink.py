"""A minimal, fast stand-in for api.sendgrid.com for benchmarks: ``POST /v3/mail/send``
answers 202 with an ``X-Message-Id`` and counts requests, personalizations and bytes
(``GET /stats``; with ``--record`` also distinct recipients and duplicates); ``GET /v3/scopes`` (the sender's check before a send) grants
``mail.send``. It checks nothing: the test suite's server does the checking.

    from bench.sendgrid_sink import start_sink
    with start_sink() as sink:          # its own process, on a free port
        ...  # point delivery.sendgrid.host at sink.url
        print(sink.stats())             # {"requests": ..., "personalizations": ..., "bytes": ...}

    python bench/sendgrid_sink.py --port 8025     # run it by hand
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from types import TracebackType
from typing import Any

# Every personalization has a "to" key; json.dumps writes it like this, and a quote
# inside a JSON string is escaped, so the count is exact.
_TO_KEYS = (b'"to": [', b'"to":[')  # pretty or compact JSON
# With --record: each personalization's first recipient, to count who got it twice.
_RECIPIENT = re.compile(rb'"to": ?\[\{"email": ?"([^"]*)"')


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _SinkServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        sink = self.server
        with sink.lock:
            sink.requests += 1
            sink.bytes += len(body)
            sink.personalizations += sum(body.count(key) for key in _TO_KEYS)
            if sink.recipients is not None:
                for address in _RECIPIENT.findall(body):
                    if address in sink.recipients:
                        sink.duplicates += 1
                    else:
                        sink.recipients.add(address)
        self.send_response(202)
        self.send_header("X-Message-Id", f"sink-{next(sink.ids)}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        sink = self.server
        if self.path == "/v3/scopes":
            data = json.dumps({"scopes": ["mail.send"]}).encode()
        else:
            with sink.lock:
                stats = {"requests": sink.requests, "personalizations": sink.personalizations, "bytes": sink.bytes}
                if sink.recipients is not None:
                    stats.update(recipients=len(sink.recipients), duplicates=sink.duplicates)
                data = json.dumps(stats).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _SinkServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, port: int, record: bool = False) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.lock = threading.Lock()
        self.ids = count(1)
        self.requests = self.personalizations = self.bytes = self.duplicates = 0
        self.recipients: set[bytes] | None = set() if record else None


class Sink:
    """A running sink process: ``url`` for ``delivery.sendgrid.host``, ``stats()``, ``stop()``."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=10) as response:
            return dict(json.load(response))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int | None = None, timeout: float = 10.0, *, record: bool = False) -> Sink:
    """Start the sink in its own process (so it does not compete for this one's GIL) and
    return once it answers. ``record``: remember every recipient, so that ``stats()``
    also gives ``recipients`` (distinct) and ``duplicates``."""
    port = port or _free_port()
    process = subprocess.Popen([sys.executable, __file__, "--port", str(port), *(["--record"] if record else [])])
    sink = Sink(process, port)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sink.stats()
            return sink
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                sink.stop()
                raise RuntimeError(f"the SendGrid sink did not start on port {port}") from None
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--record", action="store_true", help="count distinct recipients and duplicates")
    args = parser.parse_args()
    server = _SinkServer(args.port, args.record)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
