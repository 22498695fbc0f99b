"""CSV import of subscribers, streamed in chunks of a few thousand rows so that any file
size runs in constant memory, and committed chunk by chunk so that an import stopped
half-way can simply be run again: rows are merged by ``email_key``, never duplicated.

Rules (what a list owner expects): the header names the columns (``email`` is required;
``name``, ``status``, ``source``, ``subscribed_at``/``created_at`` and the other export
columns are understood; the rest go into ``attributes``); the first line of an address
wins and later lines with the same address only fill what is still blank; nobody who
unsubscribed, bounced, complained or was removed is re-activated unless ``resubscribe``;
rows with line breaks (header injection), formulas, bad dates or the wrong number of
cells are rejected with their line number and the reason.
"""

from __future__ import annotations

import csv
import datetime as dt
import gc
import json
import os
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Column, Connection, Engine, Integer, MetaData, String, Table, bindparam, delete, select, update

from newsletter.errors import SubscriberError
from newsletter.store.addresses import cell_problem, check_address, defuse_cell, shorten, suppression_hash
from newsletter.store.db import insert_ignoring_conflicts, writing
from newsletter.store.export import COLUMNS as EXPORT_COLUMNS
from newsletter.store.subscribers import NAME_MAX, token_stream, utcnow
from newsletter.store.tables import OPTED_OUT, STATUSES, subscribers, suppressions
from newsletter.yamlfile import file_mode_for

CHUNK_SIZE = 5000
MAX_REPORTED = 1000  # rejects and notices kept in the result; the rejects file has all
MAX_LINE_BYTES = 1 << 20
SQLITE_CACHE_KIB = 64 * 1024  # keeps the email_key index of a million rows in memory: 30 s, not 38
ANALYZE_AFTER = 10_000  # rows changed by one import

# header (lowercased, spaces and hyphens as underscores) -> field
COLUMNS = {
    "email": "email",
    "email_address": "email",
    "e_mail": "email",
    "name": "name",
    "full_name": "name",
    "status": "status",
    "source": "source",
    "subscribed_at": "created_at",
    "created_at": "created_at",
    "confirmed_at": "confirmed_at",
    "unsubscribed_at": "unsubscribed_at",
    "consent_at": "consent_at",
    "consent_ip": "consent_ip",
    "consent_user_agent": "consent_user_agent",
    "consent_form": "consent_form",
    "attributes": "attributes",
}
DATES = ("created_at", "confirmed_at", "unsubscribed_at", "consent_at")
TEXT_LIMITS = {"name": NAME_MAX, "source": 200, "consent_ip": 45, "consent_user_agent": 500, "consent_form": 200}
STATUS_ALIASES = {"subscribed": "active", "confirmed": "active"}
# the fields an import may change on an existing subscriber: what an export writes
# besides the address, so an export imports back whole
FIELDS = tuple(name for name in EXPORT_COLUMNS if name != "email")
_SUSPECT_START = frozenset("=+-@ \t\r\n")


@dataclass(frozen=True, slots=True)
class Reject:
    """A row that was not imported (or, as a notice, one that was only partly)."""

    line: int
    reason: str
    cells: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ImportResult:
    path: str
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0  # later lines of an address already in the file: merged
    not_reactivated: int = 0  # opted-out subscribers whose row asked for active
    rejected: int = 0
    rejects: list[Reject] = field(default_factory=list)  # the first MAX_REPORTED
    notices: list[Reject] = field(default_factory=list)  # duplicates, not re-activated
    rejects_file: Path | None = None

    def summary(self) -> str:
        parts = [f"{self.added:,} added", f"{self.updated:,} updated", f"{self.unchanged:,} unchanged"]
        if self.duplicates:
            parts.append(f"{self.duplicates:,} duplicate{'s' * (self.duplicates != 1)} merged")
        if self.not_reactivated:
            parts.append(f"{self.not_reactivated:,} opted out, not re-activated")
        parts.append(f"{self.rejected:,} rejected")
        return ", ".join(parts)


@dataclass(slots=True)
class _Batch:
    rows: list[_Row] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    count: int = 0  # non-blank lines read


@dataclass(slots=True)
class _Row:
    line: int
    key: str
    values: dict[str, Any]  # the non-empty fields of the row
    status_given: bool
    cells: tuple[str, ...]


class _RowError(Exception):
    pass


def _seen_table() -> Table:
    # Which addresses this run has met, and on which line: cross-chunk duplicates
    # without holding a million keys in memory. A temporary table dies with the run.
    return Table(
        "newsletter_import_seen",
        MetaData(),
        Column("email_key", String(320), primary_key=True),
        Column("line", Integer, nullable=False),
        prefixes=["TEMPORARY"],
    )


def import_csv(
    engine: Engine,
    path: Path,
    *,
    resubscribe: bool = False,
    source: str = "import",
    default_status: str = "active",
    rejects_path: Path | None = None,
    chunk_size: int | None = None,
    progress: Callable[[ImportResult], None] | None = None,
    now: dt.datetime | None = None,
) -> ImportResult:
    """Import the subscribers in the CSV file ``path``; see the module docstring.

    ``progress`` is called after each committed chunk. A file-level problem (missing
    email column, not UTF-8, an unterminated quote) raises ``SubscriberError`` naming the
    file and line; the chunks before it stay imported, and running the import again once
    the file is fixed gives the same result as one clean run.
    """
    if default_status not in ("active", "pending"):
        raise SubscriberError(f"imported subscribers are active or pending, not {default_status}")
    now = now or utcnow()
    result = ImportResult(path=str(path))
    try:
        binary = open(path, "rb")  # noqa: SIM115 (closed by the with below; only opening is caught)
    except OSError as exc:
        raise SubscriberError(f"{path}: cannot read: {exc.strerror}") from None
    with binary, _RejectsFile(rejects_path) as rejects_out:
        reader = csv.reader(_decoded_lines(binary, path), strict=True)
        header, fields = _header(reader, path)
        if rejects_out is not None:
            rejects_out.write(("line", "reason", *header))
        with engine.connect() as conn:
            seen = _seen_table()
            previous_cache: Any = -2000
            writing(conn)
            with conn.begin():
                seen.drop(conn, checkfirst=True)
                seen.create(conn)
                if conn.dialect.name == "sqlite":
                    # A bigger page cache for the random inserts into the email_key index.
                    previous_cache = conn.exec_driver_sql("PRAGMA cache_size").scalar() or -2000
                    conn.exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            gc_was_enabled = gc.isenabled()
            batches: Generator[_Batch, None, None] | None = None
            try:
                # A million rows make millions of short-lived dicts, and the cyclic
                # collector then rescans every live object again and again (a quarter
                # of the import's time); nothing here makes cycles.
                gc.disable()
                chunk_class, default_size = _Chunk, CHUNK_SIZE
                if conn.dialect.name == "postgresql":
                    from newsletter.store import pgbulk

                    chunk_class, default_size = pgbulk.CopyChunk, pgbulk.CHUNK_SIZE
                importer = chunk_class(conn, seen, result, resubscribe=resubscribe, now=now)
                parsed = _chunks(reader, path, header, fields, source, default_status, now, chunk_size or default_size)
                batches = pgbulk.read_ahead(parsed) if conn.dialect.name == "postgresql" else parsed
                for batch in batches:
                    result.rows += batch.count
                    for reject in batch.rejects:
                        importer.reject(reject, rejects_out)
                    if batch.rows:
                        with conn.begin():
                            importer.apply(batch.rows, rejects_out)
                    if progress is not None:
                        progress(replace(result, rejects=[], notices=[]))
            finally:
                if batches is not None:
                    batches.close()
                if gc_was_enabled:
                    gc.enable()
                if conn.in_transaction():
                    conn.rollback()
                with conn.begin():
                    seen.drop(conn, checkfirst=True)
                    if conn.dialect.name == "sqlite":
                        conn.exec_driver_sql(f"PRAGMA cache_size={int(previous_cache)}")
        if result.added + result.updated >= ANALYZE_AFTER:
            _refresh_statistics(engine)
        if rejects_out is not None:
            rejects_out.commit()
            result.rejects_file = rejects_path
    return result


def _refresh_statistics(engine: Engine) -> None:
    """After a big import the planner's statistics are stale: PostgreSQL then scanned
    the whole table for every audience batch (183 s instead of seconds for a million)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE subscribers")
        else:
            conn.exec_driver_sql("PRAGMA optimize")
        conn.commit()


def _decoded_lines(binary: IO[bytes], path: Path) -> Iterator[str]:
    """The file's lines as text, failing with the line and byte that is not UTF-8."""
    offset = 0
    number = 0
    while True:
        raw = binary.readline(MAX_LINE_BYTES)
        if not raw:
            return
        number += 1
        if len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise SubscriberError(f"{path}: line {number} is longer than {MAX_LINE_BYTES:,} bytes: is this a CSV file?")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SubscriberError(
                f"{path}: line {number} is not UTF-8 (byte {offset + exc.start:,} is 0x{raw[exc.start]:02x}): "
                "save the file as UTF-8 and import it again"
            ) from None
        if number == 1 and text.startswith("\ufeff"):
            text = text[1:]  # the byte-order mark spreadsheets write
        offset += len(raw)
        yield text


def _header(reader: Any, path: Path) -> tuple[list[str], list[str | None]]:
    """The header row and, for each column, the field it fills (None: an attribute)."""
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise SubscriberError(f"{path}: line 1: {exc}") from None
    if not header:
        raise SubscriberError(f"{path}: the file is empty: the first line must name the columns (email, name, ...)")
    fields: list[str | None] = []
    taken: dict[str, str] = {}
    for number, cell in enumerate(header, start=1):
        problem = cell_problem(cell)
        if problem:
            raise SubscriberError(f"{path}: line 1, column {number}: {problem} in the header")
        normal = cell.strip().lower().replace(" ", "_").replace("-", "_")
        target = COLUMNS.get(normal)
        if target is not None:
            if target in taken:
                raise SubscriberError(f"{path}: line 1: columns {taken[target]!r} and {cell!r} both give the {target}")
            taken[target] = cell
        fields.append(target)
    if "email" not in taken:
        names = ", ".join(repr(c) for c in header)
        raise SubscriberError(f"{path}: line 1: no email column (the header has {names})")
    return header, fields


def _chunks(
    reader: Any,
    path: Path,
    header: list[str],
    fields: list[str | None],
    source: str,
    default_status: str,
    now: dt.datetime,
    size: int,
) -> Generator[_Batch, None, None]:
    """The file's rows in batches, parsed and checked (no database work here)."""
    width = len(header)
    names = [h.strip() or f"column {i}" for i, h in enumerate(header, start=1)]
    plan = [(index, target, names[index]) for index, target in enumerate(fields)]
    latest = now + dt.timedelta(days=1)
    batch = _Batch()
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            raise SubscriberError(f"{path}: line {line}: {exc} (an unbalanced quote?)") from None
        if cells is None:
            break
        start, line = line, reader.line_num + 1
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # a blank line
        batch.count += 1
        try:
            if len(cells) != width:
                raise _RowError(f"has {len(cells)} cells, the header has {width}")
            values = _row_values(cells, plan, names, latest)
            address = check_address(values.get("email", ""))
        except (_RowError, SubscriberError) as exc:
            batch.rejects.append(Reject(start, str(exc), tuple(cells)))
            continue
        values["email"] = address.email
        if "source" not in values:
            values["source"] = source
        status_given = "status" in values
        if not status_given:
            values["status"] = default_status
        batch.rows.append(_Row(start, address.key, values, status_given, tuple(cells)))
        if batch.count >= size:
            yield batch
            batch = _Batch()
    if batch.count:
        yield batch


def _row_values(
    cells: list[str], plan: list[tuple[int, str | None, str]], names: list[str], latest: dt.datetime
) -> dict[str, Any]:
    if not ",".join(cells).isprintable() or any(c[:1] in _SUSPECT_START for c in cells):
        for index, cell in enumerate(cells):
            problem = cell_problem(cell)
            if problem:
                raise _RowError(f"{problem} in column {names[index]!r}")
    values: dict[str, Any] = {}
    attributes: dict[str, str] | None = None
    for index, target, name in plan:
        value = cells[index].strip()
        if not value:
            continue
        if target is None:
            if attributes is None:
                attributes = {}
            attributes[name] = value
        elif target == "email":
            values["email"] = value
        elif target in DATES:
            values[target] = _date(value, name, latest)
        elif target == "status":
            status = value.lower()
            status = STATUS_ALIASES.get(status, status)
            if status not in STATUSES:
                raise _RowError(f"unknown status {shorten(value)!r} in column {name!r} (use {', '.join(STATUSES)})")
            values["status"] = status
        elif target == "attributes":
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise _RowError(f"column {name!r} is not a JSON object")
            values["attributes"] = {**parsed, **values.get("attributes", {})}
        else:
            limit = TEXT_LIMITS.get(target)
            if limit is not None and len(value) > limit:
                raise _RowError(f"column {name!r} is longer than {limit} characters")
            values[target] = value
    if attributes is not None:
        values["attributes"] = {**values.get("attributes", {}), **attributes}
    return values


def _date(value: str, column: str, latest: dt.datetime) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _RowError(
            f"bad date {shorten(value)!r} in column {column!r} (use ISO 8601, like 2024-01-05T10:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if when > latest:
        raise _RowError(f"date {shorten(value)!r} in column {column!r} is in the future")
    return when


class _Chunk:
    """Applies chunks of parsed rows to the database, in the caller's transaction."""

    def __init__(
        self, conn: Connection, seen: Table, result: ImportResult, *, resubscribe: bool, now: dt.datetime
    ) -> None:
        self.conn = conn
        self.seen = seen
        self.result = result
        self.resubscribe = resubscribe
        self.now = now
        self.update = (
            update(subscribers)
            .where(subscribers.c.id == bindparam("_id"))
            .values({name: bindparam(name) for name in (*FIELDS, "updated_at")})
        )
        self.insert = _BulkInsert(
            conn,
            insert_ignoring_conflicts(conn, subscribers, "email_key"),
            ("email", "email_key", *FIELDS, "updated_at", "token"),
            {name: subscribers.c[name].type for name in (*DATES, "updated_at", "attributes")},
        )
        self.remember = _BulkInsert(conn, seen.insert(), ("email_key", "line"), {})
        self.tokens = token_stream()

    def reject(self, reject: Reject, rejects_out: _RejectsFile | None) -> None:
        self.result.rejected += 1
        if len(self.result.rejects) < MAX_REPORTED:
            self.result.rejects.append(reject)
        if rejects_out is not None:
            rejects_out.write((str(reject.line), reject.reason, *reject.cells))

    def notice(self, line: int, message: str) -> None:
        if len(self.result.notices) < MAX_REPORTED:
            self.result.notices.append(Reject(line, message))

    def _existing(self, table: str, column: str, keys: list[str], extra: str = "") -> list[Any]:
        """Raw ``SELECT column, ... WHERE column IN (keys)``: the first thing every chunk
        asks, and usually answered "none", so it skips Core's per-call IN rendering."""
        mark = "?" if self.conn.dialect.paramstyle == "qmark" else "%s"
        sql = f"SELECT {column}{extra} FROM {table} WHERE {column} IN ({', '.join([mark] * len(keys))})"
        return list(self.conn.exec_driver_sql(sql, tuple(keys)).all())

    def apply(self, rows: list[_Row], rejects_out: _RejectsFile | None) -> None:
        conn, result = self.conn, self.result
        keys = list({row.key for row in rows})
        found = [k for (k,) in self._existing("subscribers", "email_key", keys)]
        before: dict[str, dict[str, Any]] = {}
        if found:
            query = select(subscribers.c.id, subscribers.c.email_key, *(subscribers.c[f] for f in FIELDS)).where(
                subscribers.c.email_key.in_(found)
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()  # a web unsubscribe must not be overwritten
            before = {r.email_key: r._asdict() for r in conn.execute(query)}
        # earlier lines of this file with the same address: only existing subscribers
        first_lines: dict[str, int] = (
            dict(self._existing(self.seen.name, "email_key", found, ", line")) if found else {}
        )
        # Hashing every address costs; most lists have no suppressed addresses at all.
        any_suppressed = conn.exec_driver_sql("SELECT 1 FROM suppressions LIMIT 1").first() is not None
        hashes = {suppression_hash(k): k for k in keys if k not in before} if any_suppressed else {}
        suppressed = (
            {hashes[h] for (h,) in self._existing("suppressions", "email_hash", list(hashes))} if hashes else set()
        )

        state: dict[str, dict[str, Any]] = {}  # the subscriber as this chunk leaves it
        new: dict[str, dict[str, Any]] = {}
        counted: dict[str, bool] = {}  # key -> whether its first line is in this chunk
        unsuppress: list[str] = []
        remember: list[dict[str, Any]] = []
        for row in rows:
            key = row.key
            if key in first_lines:
                result.duplicates += 1
                self.notice(row.line, f"{row.values['email']} is also on line {first_lines[key]}: merged")
                current = state.get(key)
                if current is None:  # its first line was in an earlier chunk
                    current = state[key] = _copy(before[key])
                    counted[key] = False
                self._merge(current, row)
                continue
            if key in suppressed and not self.resubscribe:
                reason = (
                    f"{row.values['email']} was removed at their request and is suppressed "
                    "(re-add only with fresh consent, using --resubscribe)"
                )
                self.reject(Reject(row.line, reason, row.cells), rejects_out)
                continue
            first_lines[key] = row.line
            remember.append({"email_key": key, "line": row.line})
            counted[key] = True
            if key in before:
                current = state[key] = _copy(before[key])
                self._overwrite(current, row)
            else:
                if key in suppressed:
                    unsuppress.append(key)
                current = state[key] = new[key] = self._new(row)

        if unsuppress:
            conn.execute(
                delete(suppressions).where(suppressions.c.email_hash.in_([suppression_hash(k) for k in unsuppress]))
            )
        updates = []
        for key, first_here in counted.items():
            if key in new:
                continue
            old, current = before[key], state[key]
            if (
                all(old[f] == current[f] for f in FIELDS if f != "attributes")
                and (old["attributes"] or {}) == current["attributes"]
            ):
                result.unchanged += first_here
                continue
            result.updated += first_here
            updates.append({"_id": old["id"], **{f: current[f] for f in FIELDS}, "updated_at": self.now})
        result.added += self.write(list(new.values()), updates, remember)

    def write(self, new: list[dict[str, Any]], updates: list[dict[str, Any]], remember: list[dict[str, Any]]) -> int:
        """Store what ``apply`` decided; returns how many subscribers were added.
        (PostgreSQL does this with COPY: see ``pgbulk.CopyChunk``.)"""
        if new:
            self.insert.run(new)
        if updates:
            self.conn.execute(self.update, updates)
        if remember:
            self.remember.run(remember)
        return len(new)

    def _new(self, row: _Row) -> dict[str, Any]:
        """A subscriber this import adds."""
        values = row.values
        current = {**_BLANK, **values, "email_key": row.key, "updated_at": self.now, "token": next(self.tokens)}
        if "attributes" not in values:
            current["attributes"] = {}
        if "created_at" not in values:
            current["created_at"] = self.now
        if current["status"] == "unsubscribed":
            if current["unsubscribed_at"] is None:
                current["unsubscribed_at"] = self.now
        elif current["unsubscribed_at"] is not None:
            current["unsubscribed_at"] = None
        return current

    def _overwrite(self, current: dict[str, Any], row: _Row) -> None:
        """The first line of an address already on the list: what it gives replaces what
        was there, except ``source``: where the subscriber first came from stays."""
        values = row.values
        if not current["source"] and "source" in values:
            current["source"] = values["source"]
        for name in (
            "name",
            "created_at",
            "confirmed_at",
            "consent_at",
            "consent_ip",
            "consent_user_agent",
            "consent_form",
        ):
            if name in values:
                current[name] = values[name]
        if "attributes" in values:
            current["attributes"] = {**current["attributes"], **values["attributes"]}
        self._status(current, row, explicit=row.status_given or current["status"] is None)

    def _merge(self, current: dict[str, Any], row: _Row) -> None:
        """A later line of the same address: it fills blanks; a stop signal still counts."""
        values = row.values
        for name in (
            "name",
            "source",
            "confirmed_at",
            "consent_at",
            "consent_ip",
            "consent_user_agent",
            "consent_form",
        ):
            if name in values and not current[name]:
                current[name] = values[name]
        for name, value in values.get("attributes", {}).items():
            current["attributes"].setdefault(name, value)
        if row.status_given and values["status"] in OPTED_OUT and current["status"] not in OPTED_OUT:
            self._status(current, row, explicit=True)

    def _status(self, current: dict[str, Any], row: _Row, *, explicit: bool) -> None:
        wanted, have = row.values["status"], current["status"]
        if not explicit or wanted == have:
            if "unsubscribed_at" in row.values and have == "unsubscribed":
                current["unsubscribed_at"] = row.values["unsubscribed_at"]
            return
        if have in OPTED_OUT and wanted not in OPTED_OUT and not self.resubscribe:
            self.result.not_reactivated += 1
            self.notice(
                row.line,
                f"{row.values['email']} is {have}: not re-activated (use --resubscribe only with fresh consent)",
            )
            return
        current["status"] = wanted
        if wanted == "unsubscribed":
            current["unsubscribed_at"] = row.values.get("unsubscribed_at") or current["unsubscribed_at"] or self.now
        elif wanted not in OPTED_OUT:
            current["unsubscribed_at"] = None


class _BulkInsert:
    """One INSERT run with the driver's executemany: SQLAlchemy's per-row parameter
    handling cost more than SQLite's own work on a million rows. Values go through the
    columns' own bind processors, so they are stored exactly as Core would store them."""

    def __init__(self, conn: Connection, statement: Any, columns: tuple[str, ...], types: dict[str, Any]) -> None:
        self.conn = conn
        self.columns = columns
        compiled = statement.values({name: bindparam(name) for name in columns}).compile(dialect=conn.dialect)
        self.sql = str(compiled)
        self.order = list(compiled.positiontup) if compiled.positional and compiled.positiontup else None
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for name, type_ in types.items():
            processor = type_.dialect_impl(conn.dialect).bind_processor(conn.dialect)
            if processor is not None:
                self.processors[name] = processor

    def run(self, rows: Iterable[dict[str, Any]]) -> None:
        order = self.order or list(self.columns)
        processors = self.processors
        processed = [(i, processors[name]) for i, name in enumerate(order) if name in processors]
        memo: dict[int, tuple[Any, Any]] = {}  # the same updated_at, the empty {}: once
        params: list[Any] = []
        for row in rows:
            values = [row[name] for name in order]
            for i, processor in processed:
                value = values[i]
                if value is None:
                    continue
                last = memo.get(i)
                if last is not None and (last[0] is value or (not value and not last[0])):
                    values[i] = last[1]
                else:
                    values[i] = processor(value)
                    memo[i] = (value, values[i])
            params.append(tuple(values) if self.order is not None else dict(zip(order, values, strict=False)))
        if params:
            self.conn.exec_driver_sql(self.sql, params)


_BLANK: dict[str, Any] = {
    "email": "",
    "email_key": "",
    "name": "",
    "status": None,
    "source": "",
    "created_at": None,
    "confirmed_at": None,
    "unsubscribed_at": None,
    "consent_at": None,
    "consent_ip": None,
    "consent_user_agent": None,
    "consent_form": None,
    "attributes": None,
}


def _copy(row: dict[str, Any]) -> dict[str, Any]:
    current = dict(row)
    current["attributes"] = dict(current["attributes"] or {})
    return current


class _RejectsFile:
    """The rejected rows as CSV (formula-safe), written to a temporary file and moved
    into place at the end, so an interrupted import leaves no half-written file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.handle: IO[str] | None = None
        self.temp = ""
        self.writer: Any = None

    def __enter__(self) -> _RejectsFile | None:
        if self.path is None:
            return None
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent or Path("."))
        except OSError as exc:
            raise SubscriberError(f"{self.path}: cannot write the rejects file: {exc.strerror}") from None
        self.temp = name
        self.handle = os.fdopen(fd, "w", encoding="utf-8", newline="")
        self.writer = csv.writer(self.handle)
        return self

    def write(self, cells: tuple[str, ...]) -> None:
        self.writer.writerow([defuse_cell(c) for c in cells])

    def commit(self) -> None:
        assert self.handle is not None and self.path is not None
        os.fchmod(self.handle.fileno(), file_mode_for(self.path))
        self.handle.close()
        os.replace(self.temp, self.path)

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None and not self.handle.closed:
            self.handle.close()
            os.unlink(self.temp)
