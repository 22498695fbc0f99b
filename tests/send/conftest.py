"""Fixtures for the send job: a fresh, migrated database per test on SQLite and on
PostgreSQL (tests/dbfixtures.py), settings pointing at it, subscribers, an issue file,
and a recording stand-in for SendGrid."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from newsletter.config import Settings, load_settings
from newsletter.store import subscribers
from tests.dbfixtures import *  # noqa: F403 - database_url and engine, on SQLite and PostgreSQL

@pytest.fixture
def db_settings(project: Path, write_config, database_url: str, engine: Engine) -> Settings:
    """The project's settings on the test database; one worker, so that the order of calls
    is deterministic (tests of concurrency set their own)."""
    path = write_config({"database": {"url": database_url},
                         "delivery": {"batch_size": 2, "concurrency": 1, "max_retries": 3}})
    return load_settings(path, env={})


@pytest.fixture
def issue_path(project: Path) -> Path:
    """The example issue, approved."""
    path = project / "issues" / "2024-10-25.yaml"
    text = path.read_text(encoding="utf-8").replace("\nstatus: draft\n", "\nstatus: approved\n")
    path.write_text(text, encoding="utf-8")
    return path


def add_subscribers(engine: Engine, n: int, status: str = "active", prefix: str = "reader") -> list[str]:
    emails = [f"{prefix}{i}@example.net" for i in range(n)]
    for email in emails:
        added = subscribers.add(engine, email, name=f"Reader {email}", status="active")
        if status != "active":
            subscribers.mark_status(engine, added.id, status)
    return emails


def bulk_subscribers(engine: Engine, n: int, prefix: str = "bulk") -> list[str]:
    """``n`` active subscribers in one statement (the crash tests need thousands)."""
    import datetime as dt

    from newsletter.store.tables import subscribers as table

    now = dt.datetime.now(dt.timezone.utc)
    rows = [{"email": f"{prefix}{i}@example.net", "email_key": f"{prefix}{i}@example.net",
             "name": f"Reader {i}", "status": "active", "created_at": now, "updated_at": now,
             "source": "test", "attributes": {}, "token": secrets.token_urlsafe(24)} for i in range(n)]
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    return [r["email"] for r in rows]


class RecordingSendgrid:
    """A real HTTP server standing in for SendGrid that records every address it accepted
    (202), slowly enough (``delay``) that a test can kill a sender in the middle."""

    def __init__(self, delay: float = 0.0) -> None:
        import json
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[str] = []
        self.requests = 0
        lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(delay)
                with lock:
                    sink.requests += 1
                    sink.received.extend(to["email"] for p in body["personalizations"] for to in p["to"])
                self.send_response(202)
                self.send_header("X-Message-Id", f"m{sink.requests}")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sendgrid_sink() -> Iterator[RecordingSendgrid]:
    sink = RecordingSendgrid(delay=0.05)
    yield sink
    sink.close()
