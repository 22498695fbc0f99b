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
from newsletter.store import batches, subscribers
from tests.dbfixtures import *  # noqa: F403 - database_url and engine, on SQLite and PostgreSQL
from tests.helpers.pgcluster import pg_cluster as pg_cluster  # a throw-away PostgreSQL to restart
from tests.senders.conftest import SendgridStub


@pytest.fixture
def db_settings(project: Path, write_config, database_url: str, engine: Engine) -> Settings:
    """The project's settings on the test database; one worker, so that the order of calls
    is deterministic (tests of concurrency set their own)."""
    path = write_config(
        {"database": {"url": database_url}, "delivery": {"batch_size": 2, "concurrency": 1, "max_retries": 3}}
    )
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

    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "email": f"{prefix}{i}@example.net",
            "email_key": f"{prefix}{i}@example.net",
            "name": f"Reader {i}",
            "status": "active",
            "created_at": now,
            "updated_at": now,
            "source": "test",
            "attributes": {},
            "token": secrets.token_urlsafe(24),
        }
        for i in range(n)
    ]
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    return [r["email"] for r in rows]


def claim_as_dead(engine: Engine, send_id: int, n: int, batch_id: str) -> list[batches.Claimed]:
    """Claim ``n`` rows the way a process on another host would that died right after:
    its lease ran out ten seconds ago."""
    import datetime as dt

    claimed, _ = batches.claim_batch(
        engine,
        send_id,
        n,
        batch_id,
        owner="elsewhere:4242:dead",
        lease_seconds=1,
        now=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10),
    )
    return claimed


@pytest.fixture
def sendgrid_sink() -> Iterator[SendgridStub]:
    """A real HTTP server standing in for SendGrid, slow enough to kill a sender mid-send."""
    stub = SendgridStub(delay=0.05)
    stub.thread.start()
    yield stub
    stub.close()
