"""CSV export (formula-safe, streamed, importable again) and the audience stream the
send job reads."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from sqlalchemy import Engine

from newsletter.errors import SubscriberError
from newsletter.store import audience, export, subscribers
from newsletter.store.importer import import_csv
from tests.store.conftest import snapshot

RISKY = ["=1+1", "+SUM(A1)", "-2", "@cmd", " =1", "\t=1", "\r=1"]


def exported(engine: Engine, **options: object) -> list[list[str]]:
    out = io.StringIO(newline="")
    export.export_csv(engine, out, **options)  # type: ignore[arg-type]
    return list(csv.reader(io.StringIO(out.getvalue(), newline="")))


def test_export_defuses_formulas(engine: Engine) -> None:
    for i, name in enumerate(RISKY):
        subscribers.add(engine, f"r{i}@example.org", name=name.replace("\r", ""))
    subscribers.add(engine, "-dash@example.org", name="Plain")
    rows = exported(engine)
    names = [row[1] for row in rows[1:-1]]
    assert all(n.startswith("'") for n in names)
    assert names[0] == "'=1+1"
    assert rows[-1][:2] == ["'-dash@example.org", "Plain"]


def test_export_columns_and_status_filter(engine: Engine) -> None:
    subscribers.add(engine, "ann@example.org", name="Ann", attributes={"city": "Oslo"})
    subscribers.add(engine, "bob@example.org")
    subscribers.unsubscribe(engine, "bob@example.org")
    rows = exported(engine, status="active")
    assert rows[0] == list(export.COLUMNS) and "token" not in rows[0]
    assert len(rows) == 2
    assert rows[1][0] == "ann@example.org" and rows[1][-1] == '{"city": "Oslo"}'
    with pytest.raises(SubscriberError, match="unknown status"):
        exported(engine, status="gone")


def test_export_streams_in_pages(engine: Engine) -> None:
    for i in range(7):
        subscribers.add(engine, f"r{i}@example.org")
    rows = list(export.export_rows(engine, page_size=2))
    assert [r[0] for r in rows[1:]] == [f"r{i}@example.org" for i in range(7)]


def test_export_then_import_round_trip(engine: Engine, sample_csv: Path, tmp_path: Path) -> None:
    import_csv(engine, sample_csv)
    subscribers.unsubscribe(engine, "grace@example.org")
    path = tmp_path / "export.csv"
    assert export.export_file(engine, path) == 4
    before = snapshot(engine)
    result = import_csv(engine, path)
    assert (result.added, result.updated, result.unchanged, result.rejected) == (0, 0, 4, 0)
    assert snapshot(engine) == before


def test_export_file_is_atomic(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / "export.csv"
    path.write_text("old")
    with pytest.raises(SubscriberError, match="unknown status"):
        export.export_file(engine, path, status="gone")
    assert path.read_text() == "old"
    assert list(path.parent.iterdir()) == [path]


def test_audience_streams_active_subscribers_in_batches(engine: Engine) -> None:
    for i in range(7):
        subscribers.add(engine, f"r{i}@example.org", name=f"Reader {i}")
    subscribers.add(engine, "p@example.org", status="pending")
    subscribers.unsubscribe(engine, "r3@example.org")

    batches = list(audience.iter_active(engine, batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 2]
    members = [m for b in batches for m in b]
    assert [m.email for m in members] == [f"r{i}@example.org" for i in (0, 1, 2, 4, 5, 6)]
    first = subscribers.get(engine, "r0@example.org")
    assert first is not None
    assert members[0] == audience.AudienceMember(first.id, first.email, "Reader 0", first.token)
    assert audience.count_active(engine) == 6
    assert [m.email for b in audience.iter_active(engine, 10, after_id=members[3].id) for m in b] == [
        "r5@example.org",
        "r6@example.org",
    ]


def test_audience_sees_unsubscribes_between_batches(engine: Engine) -> None:
    for i in range(4):
        subscribers.add(engine, f"r{i}@example.org")
    stream = audience.iter_active(engine, batch_size=2)
    assert [m.email for m in next(stream)] == ["r0@example.org", "r1@example.org"]
    subscribers.unsubscribe(engine, "r3@example.org")
    assert [m.email for m in next(stream)] == ["r2@example.org"]
    assert next(stream, None) is None


def test_audience_batch_size_must_be_positive(engine: Engine) -> None:
    with pytest.raises(ValueError):
        next(audience.iter_active(engine, 0))
