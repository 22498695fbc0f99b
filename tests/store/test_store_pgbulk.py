"""PostgreSQL's bulk paths (COPY import and export) against the generic path on SQLite:
the same rejects, notices, counts and rows for the same CSV, the same export bytes, and
a COPY import killed half-way that, run again, imports every row exactly once."""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from newsletter.store import export, subscribers
from newsletter.store.importer import ImportResult, _Row, _seen_table, import_csv
from newsletter.store.pgbulk import CopyChunk
from newsletter.store.tables import subscribers as subscribers_table
from tests.store.conftest import snapshot

NOW = dt.datetime(2024, 10, 25, 12, 0, tzinfo=dt.UTC)
WriteCsv = Callable[..., Path]


def mixed_csv() -> str:
    """Good rows, every kind of bad row, duplicates within and across chunks, people
    who opted out, a removed address, attributes and dates with and without zones."""
    lines = ["email,name,status,subscribed_at,source,city,attributes"]
    for i in range(120):
        lines.append(f"reader{i}@example.org,Reader {i},,2024-0{1 + i % 9}-05T10:00:00Z,import,City {i % 5},")
        if i % 11 == 0:
            lines.append(f'READER{i}@Example.org,,unsubscribed,,,,"{{""plan"": ""gold""}}"')
        if i % 17 == 0:
            lines.append(f"reader{i}@example.org,=cmd(),,,,,")  # formula: rejected, not merged
    lines += [
        "out@example.org,Out Again,active,,import,,",  # opted out: not re-activated
        "gone@example.org,Gone,,,import,,",  # removed: suppressed
        "not-an-email,Broken,,,,,",
        ",No Address,,,,,",
        "bad-date@example.org,Bad,,tomorrow,,,",
        "future@example.org,Later,,2999-01-01T00:00:00Z,,,",
        "status@example.org,Odd,sleeping,,,,",
        'json@example.org,Json,,,,,"[1, 2]"',
        "ragged@example.org,Ragged,,,,,,extra",
        "josé@example.es,José Ñúñez,,2024-04-01T00:00:00+02:00,import,Lima,",
        'Quote@Example.org,"Hopper, ""Amazing"" Grace",pending,,import,,',
    ]
    return "\n".join(lines) + "\n"


def prepare(engine: Engine) -> None:
    out = subscribers.add(engine, "out@example.org", name="Out", source="import", now=NOW)
    subscribers.mark_status(engine, out.id, "unsubscribed", now=NOW)
    subscribers.add(engine, "reader5@example.org", name="Before", source="import", now=NOW)
    subscribers.add(engine, "gone@example.org", now=NOW)
    subscribers.remove(engine, "gone@example.org", now=NOW)


def outcome(result: ImportResult) -> tuple[object, ...]:
    return (
        result.summary(),
        result.rows,
        [(r.line, r.reason, r.cells) for r in result.rejects],
        [str(n) for n in result.notices],
    )


@pytest.mark.postgres
def test_same_csv_same_rejects_and_rows_on_both_engines(
    both_engines: tuple[Engine, Engine], write_csv: WriteCsv, tmp_path: Path
) -> None:
    path = write_csv(mixed_csv())
    results, rejects_files, rows = [], [], []
    for engine in both_engines:
        prepare(engine)
        rejects = tmp_path / f"rejects-{engine.dialect.name}.csv"
        results.append(import_csv(engine, path, chunk_size=25, rejects_path=rejects, now=NOW))
        rejects_files.append(rejects.read_bytes())
        rows.append(snapshot(engine))
    sqlite, postgres = results
    assert outcome(postgres) == outcome(sqlite)
    assert sqlite.rejected == 16 and sqlite.duplicates == 11 and sqlite.not_reactivated == 1
    assert rejects_files[0] == rejects_files[1]
    assert rows[0] == rows[1] and len(rows[0]) == 123


@pytest.mark.postgres
def test_export_bytes_are_the_same_on_both_engines(both_engines: tuple[Engine, Engine], write_csv: WriteCsv) -> None:
    path = write_csv(mixed_csv())
    exports = []
    for engine in both_engines:
        import_csv(engine, path, now=NOW)
        subscribers.add(
            engine,
            "risky@example.org",
            name="=1+1",
            attributes={"b": 'x"y\n', "a": "ü", "Z": "1"},
            now=NOW.replace(microsecond=123456),
        )
        subscribers.add(engine, "-dash@example.org", name=" @home\tbase", now=NOW)
        subscribers.unsubscribe(engine, "reader7@example.org", now=NOW.replace(microsecond=5))
        for status in (None, "unsubscribed"):
            out = io.StringIO(newline="")
            exports.append((status, export.export_csv(engine, out, status=status), out.getvalue()))
    assert exports[:2] == exports[2:]
    (_, total, text), (_, unsubscribed, _) = exports[:2]
    assert total == 124 + 2 and unsubscribed == 12
    assert "\r\n\"risky@example.org,'=1+1,active," not in text  # the cell is quoted, not the row
    assert "risky@example.org,'=1+1,active," in text
    assert "'-dash@example.org,'@home\tbase," in text
    assert '"{""Z"": ""1"", ""a"": ""ü"", ""b"": ""x\\""y\\n""}"' in text
    assert "2024-10-25T12:00:00.123456+00:00" in text and "2024-10-25T12:00:00.000005+00:00" in text


def test_an_existing_subscribers_source_is_kept(engine: Engine, write_csv: WriteCsv) -> None:
    subscribers.add(engine, "kept@example.org", source="web form", now=NOW)
    subscribers.add(engine, "blank@example.org", now=NOW)
    result = import_csv(
        engine,
        write_csv(
            "email,name,source\nkept@example.org,Kept,list-2019\n"
            "blank@example.org,Blank,list-2019\nnew@example.org,New,list-2019\n"
        ),
    )
    assert (result.added, result.updated) == (1, 2)
    sources = {
        email: getattr(subscribers.get(engine, email), "source", None)
        for email in ("kept@example.org", "blank@example.org", "new@example.org")
    }
    assert sources == {"kept@example.org": "web form", "blank@example.org": "list-2019", "new@example.org": "list-2019"}


@pytest.mark.postgres
def test_copy_import_killed_half_way_then_rerun_imports_each_row_once(
    both_engines: tuple[Engine, Engine], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    sqlite, postgres = both_engines
    rows = 100_000
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write("email,name,subscribed_at\n")
        for i in range(rows):
            out.write(f"Reader.{i}@Example{i % 97}.org,Reader {i},2024-01-{1 + i % 28:02d}T08:00:00Z\n")
            if i % 1000 == 999:
                out.write(f"reader.{i - 500}@example{(i - 500) % 97}.org,,\n")  # a duplicate, earlier chunk
    config = write_config({"database": {"url": postgres.url.render_as_string(hide_password=False)}})
    newsletter = Path(sys.executable).parent / "newsletter"
    process = subprocess.Popen(
        [str(newsletter), "--config", str(config), "subscribers", "import", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")},
    )
    query = select(func.count()).select_from(subscribers_table)
    try:
        deadline = time.monotonic() + 120
        committed = 0
        while committed == 0 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
            with postgres.connect() as conn:
                committed = conn.execute(query).scalar_one()
        process.send_signal(signal.SIGKILL)  # no clean-up: like a machine that went away
    finally:
        process.wait(30)
    assert process.returncode == -signal.SIGKILL, "the import finished before it could be killed"
    assert 0 < committed < rows

    resumed = import_csv(postgres, path)
    assert resumed.rows == rows + rows // 1000 and resumed.rejected == 0
    assert resumed.added + resumed.unchanged == rows and resumed.unchanged >= committed
    assert resumed.duplicates == rows // 1000

    clean = import_csv(sqlite, path)
    assert (clean.added, clean.duplicates) == (rows, rows // 1000)
    assert snapshot(postgres) == snapshot(sqlite)


@pytest.mark.postgres
def test_a_sign_up_that_races_a_copy_chunk_is_kept(both_engines: tuple[Engine, Engine]) -> None:
    _, postgres = both_engines
    with postgres.connect() as conn:
        seen = _seen_table()
        with conn.begin():
            seen.create(conn)
        result = ImportResult("race.csv")
        chunk = CopyChunk(conn, seen, result, resubscribe=False, now=NOW)
        rows = [
            _Row(
                2,
                "race@example.org",
                {"email": "race@example.org", "name": "Imported", "status": "active", "source": "import"},
                False,
                (),
            ),
            _Row(
                3,
                "calm@example.org",
                {"email": "calm@example.org", "name": "Calm", "status": "active", "source": "import"},
                False,
                (),
            ),
        ]
        new = [chunk._new(row) for row in rows]  # what the chunk decided after its look-up...
        subscribers.add(postgres, "race@example.org", name="Signed up", source="web", now=NOW)  # ...then this
        with conn.begin():
            added = chunk.write(new, [], [{"email_key": row.key, "line": row.line} for row in rows])
    assert added == 1
    raced, calm = subscribers.get(postgres, "race@example.org"), subscribers.get(postgres, "calm@example.org")
    assert raced is not None and (raced.name, raced.source) == ("Signed up", "web")
    assert calm is not None and calm.name == "Calm"


def test_attributes_json_with_a_huge_number_imports_on_both_engines(engine: Engine, write_csv: WriteCsv) -> None:
    result = import_csv(
        engine, write_csv('email,attributes\nbig@example.org,"{""n"": 123456789012345678901234567890}"\n')
    )
    assert result.added == 1
    found = subscribers.get(engine, "big@example.org")
    assert found is not None and found.attributes == {"n": 123456789012345678901234567890}
