"""The database connection: an engine from the settings (SQLite file by default,
PostgreSQL by URL), its schema revision, and Alembic upgrades run from the package.

Every command that uses the database calls ``open_database(settings)``: it refuses a
database that is unreachable, locked or behind on its migrations with one clear
``StoreError`` (or upgrades it when ``database.auto_upgrade`` is set).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url

from newsletter.errors import StoreError, TransientStoreError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import ExceptionContext

    from newsletter.config import Settings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_TIMEOUT = 10.0  # seconds a writer waits for another one before "locked"
CONNECT_TIMEOUT = 10  # seconds to reach a PostgreSQL server
UPGRADE_HINT = "run `newsletter db upgrade` (or set database.auto_upgrade: true)"


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema is (``current``, None when empty) and should be."""

    current: str | None
    head: str
    known: bool  # False: the database is newer than this code

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


@dataclass(frozen=True)
class Upgrade:
    """What ``upgrade_database`` did."""

    database: str
    before: str | None
    after: str


def describe(url: str | URL) -> str:
    """The database for messages: a SQLite path, or the URL without its password."""
    url = make_url(url)
    if url.get_backend_name() == "sqlite":
        return f"SQLite database {url.database or ':memory:'}"
    return f"database {url.render_as_string(hide_password=True)}"


def resolve_url(url: str, base: Path) -> URL:
    """``url`` with a relative SQLite path made absolute against ``base``."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise StoreError(f"database.url {url!r} is not a database URL") from None
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path and path != ":memory:" and not path.startswith("file:") and not Path(path).is_absolute():
            parsed = parsed.set(database=str(base / path))
    return parsed


def database_url(settings: Settings) -> URL:
    """The configured database; a relative SQLite path is relative to the config file."""
    return resolve_url(settings.database.url, settings.config_path.resolve().parent)


def create_store_engine(url: str | URL) -> Engine:
    """An engine for ``url`` that turns driver failures into ``StoreError``.

    SQLite: WAL journal (readers never wait for the writer), foreign keys on, a busy
    timeout (``?timeout=`` in the URL, default 10 s), and ``BEGIN IMMEDIATE`` for
    ``write_transaction`` so that a writer waits for the lock instead of failing half-way.
    PostgreSQL: psycopg 3 (``postgresql+psycopg://``), a connect timeout, pre-ping.
    """
    url = make_url(url)
    backend = url.get_backend_name()
    if backend == "postgresql" and url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    connect_args: dict[str, Any] = {}
    timeout = SQLITE_TIMEOUT
    if backend == "sqlite":
        if "timeout" in url.query:
            timeout = float(str(url.query["timeout"]))
        else:
            connect_args["timeout"] = SQLITE_TIMEOUT
        engine = create_engine(url, connect_args=connect_args)
        _sqlite_setup(engine)
    elif backend == "postgresql":
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT
        try:
            engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        except ModuleNotFoundError as error:
            raise StoreError(f"{describe(url)}: the driver {error.name} is not installed") from None
    else:
        raise StoreError(
            f"database URL {url.render_as_string(hide_password=True)!r}: use sqlite:///FILE "
            "or postgresql+psycopg://USER@HOST/DATABASE"
        )
    event.listen(engine, "handle_error", _translator(describe(url), timeout))
    return engine


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below), so it can say which kind.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; durable at checkpoint
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("newsletter_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# PostgreSQL error classes another attempt may cure: the server is shutting down or
# starting (a restart, a failover), the connection was terminated, a serialization
# failure or a deadlock.
_PG_TRANSIENT = ("57P01", "57P02", "57P03", "40001", "40P01", "08000", "08001", "08003", "08004", "08006")


def _translator(where: str, timeout: float) -> Any:
    def translate(context: ExceptionContext) -> None:
        original = context.original_exception
        message = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
        if isinstance(original, sqlite3.OperationalError):
            lowered = message.lower()
            if "locked" in lowered or "busy" in lowered:
                raise TransientStoreError(
                    f"{where} is locked by another process (waited {timeout:g} s); try again when it has finished"
                ) from original
            if "disk is full" in lowered:
                raise TransientStoreError(f"{where}: {message}") from original
            if "no such table" in lowered:
                raise StoreError(f"{where} has no {message.split(':')[-1].strip()} table: {UPGRADE_HINT}") from original
            if "unable to open" in lowered:
                raise StoreError(f"cannot open {where}: does its folder exist, and may we write there?") from original
            if "readonly" in lowered:
                raise StoreError(f"{where} is read-only") from original
            raise StoreError(f"{where}: {message}") from original
        if isinstance(original, sqlite3.DatabaseError) and "not a database" in message:
            raise StoreError(f"{where} is not a SQLite database file") from original
        if context.dialect is not None and context.dialect.name == "postgresql":
            transient = getattr(original, "sqlstate", None) in _PG_TRANSIENT
            if isinstance(context.sqlalchemy_exception, exc.OperationalError):
                if context.connection is None or context.is_disconnect:
                    raise TransientStoreError(f"cannot reach {where}: {message}") from original
                raise (TransientStoreError if transient else StoreError)(f"{where}: {message}") from original
            if transient:
                raise TransientStoreError(f"{where}: {message}") from original
            if type(original).__name__ == "UndefinedTable":
                raise StoreError(f"{where}: {message}; {UPGRADE_HINT}") from original

    return translate


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that will write; commits on success.

    On SQLite this takes the write lock up front (``BEGIN IMMEDIATE``): a transaction
    that reads first and upgrades to writing later can fail at once with "locked".
    """
    with engine.connect() as conn, writing(conn).begin():
        yield conn


@contextmanager
def durable_transaction(engine: Engine) -> Iterator[Connection]:
    """A ``write_transaction`` that is on disk when it commits, power loss included: the
    send ledger's "in flight" mark must never turn back into "pending". PostgreSQL
    commits durably already; SQLite in WAL mode with ``synchronous=NORMAL`` may lose the
    last commits on power loss, so this transaction runs with ``synchronous=FULL``."""
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection if conn.dialect.name == "sqlite" else None
        if raw is not None:
            raw.execute("PRAGMA synchronous=FULL")
        try:
            with writing(conn).begin():
                yield conn
        finally:
            if raw is not None:
                raw.execute("PRAGMA synchronous=NORMAL")


def writing(conn: Connection) -> Connection:
    """Mark ``conn`` (before ``begin``) as a writer: see ``write_transaction``."""
    return conn.execution_options(newsletter_write=True)


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


_REVISION_LINE = re.compile(r'^(revision|down_revision): str(?: \| None)? = (?:"([^"]+)"|None)', re.MULTILINE)


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """This code's newest schema revision, read from the migration files without Alembic
    (the one revision that no other revises), or None when that is not one revision."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for name, value in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            if value:
                (revisions if name == "revision" else revised).add(value)
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def _at_head(engine: Engine) -> bool:
    """Whether the database is at this code's head revision, by one query: the usual
    case, checked without importing Alembic (0.2 s of every command's start)."""
    head = head_revision()
    if head is None:
        return False
    try:
        with engine.connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except (exc.DBAPIError, StoreError):  # no alembic_version table yet (see _translator)
        return False
    return current == [head]


def schema_state(engine: Engine) -> SchemaState:
    """Read the database's Alembic revision and compare it with this code's head."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None, "the package ships no migrations"
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    known = current is None or current in {rev.revision for rev in script.walk_revisions()}
    return SchemaState(current=current, head=head, known=known)


def upgrade(engine: Engine, revision: str = "head") -> SchemaState:
    """Apply the migrations up to ``revision``; return the state before."""
    from alembic import command

    before = schema_state(engine)
    if not before.known:
        raise _unknown(describe(engine.url), before)
    with engine.connect() as conn:
        command.upgrade(alembic_config(writing(conn)), revision)
        conn.commit()
    return before


def _unknown(where: str, state: SchemaState) -> StoreError:
    return StoreError(
        f"{where} is at schema revision {state.current}, which this version of newsletter "
        f"does not know (it knows up to {state.head}): upgrade newsletter"
    )


def _sqlite_file_missing(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite":
        return None
    path = url.database or ""
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return None if Path(path).exists() else Path(path)


def open_database(settings: Settings) -> Engine:
    """The engine for the configured database, after checking it is reachable and its
    schema is current; upgrades it first when ``database.auto_upgrade`` is set."""
    url = database_url(settings)
    where = describe(url)
    auto = settings.database.auto_upgrade
    missing = _sqlite_file_missing(url)
    if missing is not None and not auto:
        raise StoreError(f"{where} does not exist yet: {UPGRADE_HINT}")
    engine = create_store_engine(url)
    try:
        if _at_head(engine):
            return engine
        state = schema_state(engine)
        if not state.known:
            raise _unknown(where, state)
        if not state.up_to_date:
            if not auto:
                have = (
                    "has no schema yet"
                    if state.current is None
                    else (f"is at schema revision {state.current}, behind {state.head}")
                )
                raise StoreError(f"{where} {have}: {UPGRADE_HINT}")
            upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


@contextmanager
def database(settings: Settings, given: Engine | None = None) -> Iterator[Engine]:
    """``given``, or the configured database opened now (``open_database``) and closed
    afterwards: "close it if we opened it" in one place."""
    if given is not None:
        yield given
        return
    engine = open_database(settings)
    try:
        yield engine
    finally:
        engine.dispose()


def upgrade_database(settings: Settings) -> Upgrade:
    """``newsletter db upgrade``: create or migrate the configured database."""
    url = database_url(settings)
    engine = create_store_engine(url)
    try:
        before = upgrade(engine)
        return Upgrade(database=describe(url), before=before.current, after=before.head)
    finally:
        engine.dispose()


def database_status(settings: Settings) -> tuple[str, SchemaState]:
    """``newsletter db status``: which database, and where its schema is."""
    url = database_url(settings)
    missing = _sqlite_file_missing(url)
    if missing is not None:
        raise StoreError(f"{describe(url)} does not exist yet: run `newsletter db upgrade`")
    engine = create_store_engine(url)
    try:
        return describe(url), schema_state(engine)
    finally:
        engine.dispose()


def insert_ignoring_conflicts(conn: Connection, table: Any, *index_elements: str) -> Any:
    """``INSERT ... ON CONFLICT (index_elements) DO NOTHING`` for this connection's backend."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=list(index_elements))
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(index_elements))
