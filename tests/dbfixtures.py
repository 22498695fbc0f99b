"""Database fixtures for any test that needs the store, on SQLite and on PostgreSQL.

A conftest uses them with ``from tests.dbfixtures import *``. ``database_url`` (and
``engine``) run a test twice: on a fresh SQLite file, and on PostgreSQL in a schema made
for this test run with a random name (emptied before each test, dropped at the end), so
runs on one server never see each other. Without a reachable PostgreSQL those cases are
skipped, unless the environment variable CI is set: then they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from newsletter.store.db import create_store_engine, upgrade
from newsletter.store.tables import metadata

__all__ = [
    "POSTGRES_URL",
    "blank_database_url",
    "both_engines",
    "database_url",
    "engine",
    "postgres_run_url",
    "postgres_server",
    "scoped_url",
    "sqlite_template",
]

POSTGRES_URL = os.environ.get("NEWSLETTER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def scoped_url(schema: str) -> str:
    """The test server's URL with connections whose search_path is ``schema``."""
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Engine]:
    """An engine on the test server; skips (fails under CI) when it is unreachable."""
    admin = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        admin.dispose()
        message = f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(exc).splitlines()[0]}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (required when CI is set)")
        pytest.skip(message)
    yield admin
    admin.dispose()


def _new_schema(admin: Engine, prefix: str) -> str:
    schema = f"{prefix}_{secrets.token_hex(6)}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    return schema


def _drop_schema(admin: Engine, schema: str) -> None:
    with admin.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session")
def postgres_run_url(postgres_server: Engine) -> Iterator[str]:
    """A migrated schema for this test run (one per xdist worker)."""
    schema = _new_schema(postgres_server, "nl_run")
    url = scoped_url(schema)
    engine = create_store_engine(url)
    try:
        upgrade(engine)
        engine.dispose()
        yield url
    finally:
        engine.dispose()
        _drop_schema(postgres_server, schema)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = create_store_engine(f"sqlite:///{path}")
    upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database: a new SQLite file, or the run's PostgreSQL schema
    with every table emptied."""
    if request.param == "sqlite":
        path = tmp_path / "newsletter.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    return _emptied(request.getfixturevalue("postgres_run_url"))


def _emptied(url: str) -> str:
    engine = create_store_engine(url)
    names = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    engine.dispose()
    return url


@pytest.fixture
def both_engines(tmp_path: Path, sqlite_template: Path, postgres_run_url: str) -> Iterator[tuple[Engine, Engine]]:
    """(SQLite, PostgreSQL), both empty and migrated: for tests that compare the two."""
    path = tmp_path / "both.db"
    shutil.copy(sqlite_template, path)
    engines = (create_store_engine(f"sqlite:///{path}"), create_store_engine(_emptied(postgres_run_url)))
    yield engines
    for engine in engines:
        engine.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_store_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def blank_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all: a SQLite path not yet created, or a new empty
    PostgreSQL schema (dropped after the test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'blank.db'}"
        return
    admin: Engine = request.getfixturevalue("postgres_server")
    schema = _new_schema(admin, "nl_blank")
    try:
        yield scoped_url(schema)
    finally:
        _drop_schema(admin, schema)
