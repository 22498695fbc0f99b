"""Fixtures of the storage suite: every test that takes ``engine`` or ``database_url``
runs on SQLite and on PostgreSQL (see tests/dbfixtures.py), plus settings on that
database and small helpers to write CSV files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from newsletter.config import Settings, load_settings
from tests.dbfixtures import *  # noqa: F403 - the shared database fixtures


@pytest.fixture
def db_settings(write_config: Callable[..., Path], database_url: str) -> Settings:
    """The project's settings on the test database."""
    return load_settings(write_config({"database": {"url": database_url}}), env={})


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    """Write ``text`` (str, or bytes as is) to a CSV file in tmp_path."""

    def write(text: str | bytes, name: str = "subscribers.csv") -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8", newline="")
        return path

    return write


@pytest.fixture
def sample_csv(fixtures_dir: Path) -> Path:
    return fixtures_dir / "subscribers" / "import-sample.csv"


def snapshot(engine: Any) -> list[tuple[Any, ...]]:
    """Everything an import decides about the subscribers, ordered by address."""
    from sqlalchemy import select

    from newsletter.store.tables import subscribers

    columns = [c for c in subscribers.c if c.name not in ("id", "token", "updated_at")]
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(select(*columns).order_by(subscribers.c.email_key))]
