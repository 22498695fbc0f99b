"""Fixtures for the send job: a fresh, migrated database per test on SQLite and on
PostgreSQL (a schema of its own), settings pointing at it, subscribers, an issue file."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from newsletter.config import Settings, load_settings
from newsletter.store import subscribers
from newsletter.store.db import create_store_engine, upgrade

PG_URL = os.environ.get("NEWSLETTER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_schema() -> Iterator[str]:
    """A URL whose connections use a new, empty schema; dropped afterwards."""
    admin = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        admin.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and unreachable: {exc}")
        pytest.skip("PostgreSQL is not reachable")
    schema = f"t_{secrets.token_hex(6)}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'newsletter.db'}"
    else:
        yield from _postgres_schema()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_store_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


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
