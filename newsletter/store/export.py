"""CSV export of subscribers, streamed page by page (constant memory at any list size)
and safe to open in a spreadsheet: a cell that could run as a formula gets a leading
single quote. The columns are the ones the importer reads back.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine, select

from newsletter.errors import SubscriberError
from newsletter.store.addresses import defuse_cell
from newsletter.store.subscribers import check_status
from newsletter.store.tables import UtcDateTime, subscribers
from newsletter.yamlfile import file_mode_for

PAGE_SIZE = 5000
COLUMNS = (
    "email",
    "name",
    "status",
    "source",
    "created_at",
    "confirmed_at",
    "unsubscribed_at",
    "consent_at",
    "consent_ip",
    "consent_user_agent",
    "consent_form",
    "attributes",
)  # never the token: it unsubscribes whoever holds it
DATES = frozenset(name for name in COLUMNS if isinstance(subscribers.c[name].type, UtcDateTime))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True) if value else ""
    return defuse_cell(str(value))


def export_rows(engine: Engine, *, status: str | None = None, page_size: int = PAGE_SIZE) -> Iterator[list[str]]:
    """The export's rows (header first) as formula-safe strings, read by keyset pages."""
    if status is not None:
        check_status(status)
    yield list(COLUMNS)
    columns = [subscribers.c.id, *(subscribers.c[name] for name in COLUMNS)]
    after = 0
    while True:
        query = select(*columns).where(subscribers.c.id > after)
        if status is not None:
            query = query.where(subscribers.c.status == status)
        with engine.connect() as conn:  # one short read per page: no long-held snapshot
            page = conn.execute(query.order_by(subscribers.c.id).limit(page_size)).all()
        if not page:
            return
        for row in page:
            yield [_cell(value) for value in row[1:]]
        after = page[-1][0]


def export_csv(engine: Engine, out: TextIO, *, status: str | None = None, page_size: int = PAGE_SIZE) -> int:
    """Write the subscribers (optionally only those with ``status``) to ``out`` as CSV;
    returns how many were written. ``out`` should be opened with ``newline=""``.
    PostgreSQL streams it with one COPY (``pgbulk.copy_export``), the same cells."""
    if status is not None:
        check_status(status)
    if engine.dialect.name == "postgresql":
        from newsletter.store import pgbulk

        with engine.connect() as conn:
            return pgbulk.copy_export(conn, out, COLUMNS, DATES, status)
    writer = csv.writer(out)
    written = -1
    for row in export_rows(engine, status=status, page_size=page_size):
        writer.writerow(row)
        written += 1
    return written


def export_file(engine: Engine, path: Path, *, status: str | None = None) -> int:
    """``export_csv`` into ``path``, atomically: an interrupted export leaves no
    half-written file behind (and no old one replaced)."""
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SubscriberError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            written = export_csv(engine, out, status=status)
            os.fchmod(out.fileno(), file_mode_for(path))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return written
