"""The database connection: engine settings, migrations, and the clear errors for a
database that is missing, behind, newer, unreachable or locked."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text

from newsletter.config import Settings, load_settings
from newsletter.errors import StoreError
from newsletter.store import db, subscribers
from newsletter.store.tables import metadata

WriteConfig = Callable[..., Path]


def settings_for(write_config: WriteConfig, url: str, auto_upgrade: bool = False) -> Settings:
    return load_settings(write_config({"database": {"url": url, "auto_upgrade": auto_upgrade}}), env={})


def test_migrations_create_exactly_the_tables(engine: Engine) -> None:
    def for_this_engine(obj: object, _name: object, type_: str, reflected: bool, _compare_to: object) -> bool:
        # an index declared for the other engine only (``Index.ddl_if``)
        only = getattr(obj, "_ddl_if", None)
        return reflected or only is None or only.dialect in (None, engine.dialect.name)

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": for_this_engine})
        differences = compare_metadata(context, metadata)
    assert differences == []


def test_sqlite_engine_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = db.create_store_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    engine.dispose()


def test_relative_sqlite_path_is_relative_to_the_config_file(write_config: WriteConfig, project: Path) -> None:
    cfg = settings_for(write_config, "sqlite:///data/newsletter.db")
    assert db.database_url(cfg).database == str(project / "data" / "newsletter.db")
    cfg = settings_for(write_config, "sqlite:////srv/newsletter.db")
    assert db.database_url(cfg).database == "/srv/newsletter.db"


def test_upgrade_then_open(write_config: WriteConfig, blank_database_url: str) -> None:
    cfg = settings_for(write_config, blank_database_url)
    done = db.upgrade_database(cfg)
    engine = db.open_database(cfg)
    assert done.before is None and done.after == db.schema_state(engine).head
    subscribers.add(engine, "ann@example.org")
    engine.dispose()
    again = db.upgrade_database(cfg)
    assert again.before == again.after


def test_a_current_database_opens_without_alembic(write_config: WriteConfig, blank_database_url: str) -> None:
    import subprocess
    import sys

    cfg = settings_for(write_config, blank_database_url)
    db.upgrade_database(cfg)
    engine = db.create_store_engine(db.database_url(cfg))
    assert db.head_revision() == db.schema_state(engine).head
    engine.dispose()
    # a command on a current database checks its revision with one query, no Alembic
    code = (
        "import sys; from newsletter.cli import main; code = main(['--config', sys.argv[1], 'subscribers', 'count']);"
        "print(code, 'alembic' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(cfg.config_path)], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split()[-2:] == ["0", "False"], done.stdout + done.stderr


def test_missing_sqlite_file_is_refused(write_config: WriteConfig, project: Path) -> None:
    cfg = settings_for(write_config, "sqlite:///missing.db")
    with pytest.raises(StoreError) as error:
        db.open_database(cfg)
    assert str(error.value) == (
        f"SQLite database {project / 'missing.db'} does not exist yet: "
        "run `newsletter db upgrade` (or set database.auto_upgrade: true)"
    )
    assert not (project / "missing.db").exists()  # refusing creates nothing


def test_empty_database_is_refused(write_config: WriteConfig, blank_database_url: str) -> None:
    engine = db.create_store_engine(blank_database_url)
    with engine.begin() as conn:  # exists, but has no schema
        conn.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    engine.dispose()
    with pytest.raises(StoreError, match=r"has no schema yet: run `newsletter db upgrade`"):
        db.open_database(settings_for(write_config, blank_database_url))


def test_database_behind_on_migrations_is_refused(write_config: WriteConfig, blank_database_url: str) -> None:
    engine = db.create_store_engine(blank_database_url)
    state = db.schema_state(engine)
    from alembic.script import ScriptDirectory

    previous = ScriptDirectory.from_config(db.alembic_config()).get_revision(state.head).down_revision
    assert isinstance(previous, str)
    db.upgrade(engine, previous)
    engine.dispose()

    with pytest.raises(StoreError) as error:
        db.open_database(settings_for(write_config, blank_database_url))
    assert f"is at schema revision {previous}, behind {state.head}: run `newsletter db upgrade`" in str(error.value)

    engine = db.open_database(settings_for(write_config, blank_database_url, auto_upgrade=True))
    assert db.schema_state(engine).up_to_date
    engine.dispose()


def test_database_newer_than_the_code_is_refused(write_config: WriteConfig, blank_database_url: str) -> None:
    database_url = blank_database_url
    engine = db.create_store_engine(database_url)
    db.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    engine.dispose()
    with pytest.raises(StoreError, match="schema revision f00d, which this version of newsletter does not know"):
        db.open_database(settings_for(write_config, database_url))


def test_unreachable_postgres_is_a_clear_error(write_config: WriteConfig) -> None:
    cfg = settings_for(write_config, "postgresql+psycopg://newsletter:secret@127.0.0.1:1/newsletter")
    with pytest.raises(StoreError) as error:
        db.open_database(cfg)
    message = str(error.value)
    assert message.startswith("cannot reach database postgresql+psycopg://newsletter:***@127.0.0.1:1/newsletter: ")
    assert "secret" not in message and "\n" not in message


def test_unknown_database_url_is_a_clear_error(write_config: WriteConfig) -> None:
    with pytest.raises(StoreError, match="use sqlite:///FILE or postgresql"):
        db.open_database(settings_for(write_config, "mysql://localhost/x"))
    with pytest.raises(StoreError, match="is not a database URL"):
        db.open_database(settings_for(write_config, "not a url"))


def test_folder_that_does_not_exist(tmp_path: Path) -> None:
    engine = db.create_store_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}")
    with pytest.raises(StoreError, match="cannot open SQLite database .*: does its folder exist"):
        db.upgrade(engine)


def test_locked_sqlite_database_is_a_clear_error(sqlite_template: Path, tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    path.write_bytes(sqlite_template.read_bytes())
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process is writing
    holder.execute("INSERT INTO suppressions VALUES ('x', 'removed', '2024-01-01')")
    engine = db.create_store_engine(f"sqlite:///{path}?timeout=0.2")
    try:
        assert subscribers.count(engine) == 0  # readers are not blocked (WAL)
        with pytest.raises(StoreError) as error:
            subscribers.add(engine, "ann@example.org")
        assert str(error.value) == (
            f"SQLite database {path} is locked by another process (waited 0.2 s); try again when it has finished"
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        engine.dispose()
    assert subscribers.add(db.create_store_engine(f"sqlite:///{path}"), "ann@example.org").email == "ann@example.org"


def test_not_a_database_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database" * 100)
    with pytest.raises(StoreError, match="is not a SQLite database file"):
        db.schema_state(db.create_store_engine(f"sqlite:///{path}"))


def test_status(write_config: WriteConfig, database_url: str) -> None:
    where, state = db.database_status(settings_for(write_config, database_url))
    assert state.up_to_date and state.known
    assert where.startswith(("SQLite database", "database postgresql+psycopg://"))
