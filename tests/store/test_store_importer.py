"""CSV import: the traps of the sample file, merging, opt-out rules, suppression,
resuming after a crash, malformed files, the rejects file."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete

from newsletter.errors import SubscriberError
from newsletter.store import importer, subscribers
from newsletter.store.importer import ImportResult, import_csv
from newsletter.store.tables import subscribers as table
from tests.store.conftest import snapshot

WriteCsv = Callable[..., Path]


def reasons(result: ImportResult) -> dict[int, str]:
    return {reject.line: reject.reason for reject in result.rejects}


def test_sample_file_traps(engine: Engine, sample_csv: Path) -> None:
    result = import_csv(engine, sample_csv)

    assert (result.added, result.updated, result.unchanged, result.duplicates, result.rejected) == (4, 0, 0, 1, 6)
    assert result.rows == 11  # line 7-8 is one record: a quoted cell with a line break
    got = reasons(result)
    assert sorted(got) == [5, 6, 7, 9, 12, 13]
    assert got[5].startswith("invalid email address 'not-an-email'")
    assert got[6] == "no email address"
    assert got[7] == "line break (header injection) in column 'email'"
    assert got[9].startswith("formula content '=HYPERLINK(") and got[9].endswith("in column 'email'")
    assert got[12].startswith("bad date 'not-a-date' in column 'subscribed_at'")
    assert got[13] == "has 5 cells, the header has 4"
    assert [str(n) for n in result.notices] == ["line 3: Ada@Example.com is also on line 2: merged"]

    ada = subscribers.get(engine, "ADA@example.COM")
    assert ada is not None and ada.name == "Ada Lovelace" and ada.email == "ada@example.com"  # first line wins
    assert ada.source == "website" and ada.created_at.isoformat() == "2024-01-05T10:00:00+00:00"
    grace = subscribers.get(engine, "grace@example.org")
    assert grace is not None and grace.name == "Hopper, Grace"
    jose = subscribers.get(engine, "josé@example.es")
    assert jose is not None and jose.name == "José Ñúñez"
    assert subscribers.get(engine, "evil@example.com") is None
    assert subscribers.get(engine, "carol@example.com") is None
    assert subscribers.get(engine, "dave@example.com") is None


def test_idn_domain_is_stored_as_given_and_keyed_in_punycode(engine: Engine, sample_csv: Path) -> None:
    import_csv(engine, sample_csv)
    bob = subscribers.get(engine, "bob@xn--mnchen-3ya.example")
    assert bob is not None
    assert bob.email == "bob@münchen.example"
    assert bob.email_key == "bob@xn--mnchen-3ya.example"
    assert subscribers.get(engine, "BOB@MÜNCHEN.example") == bob


def test_rerun_changes_nothing(engine: Engine, sample_csv: Path) -> None:
    import_csv(engine, sample_csv)
    before = snapshot(engine)
    tokens = {s.email: s.token for s in subscribers.list_subscribers(engine)}
    again = import_csv(engine, sample_csv)
    assert (again.added, again.updated, again.unchanged, again.rejected) == (0, 0, 4, 6)
    assert snapshot(engine) == before
    assert {s.email: s.token for s in subscribers.list_subscribers(engine)} == tokens  # generated once


def test_case_duplicates_merge_into_one_subscriber(engine: Engine, write_csv: WriteCsv) -> None:
    path = write_csv(
        "email,name,city\nMia@Example.org,,Lisbon\nmia@example.ORG,Mia Wong,Porto\nMIA@EXAMPLE.ORG,Someone Else,\n"
    )
    result = import_csv(engine, path)
    assert (result.added, result.duplicates) == (1, 2)
    assert subscribers.count(engine) == 1
    mia = subscribers.get(engine, "mia@example.org")
    assert mia is not None
    assert mia.email == "Mia@Example.org"  # as given on its first line
    assert mia.name == "Mia Wong"  # a later line fills what the first left blank...
    assert dict(mia.attributes) == {"city": "Lisbon"}  # ...but does not overwrite


def test_duplicates_across_chunks_merge_like_within_one(engine: Engine, write_csv: WriteCsv) -> None:
    path = write_csv(
        "email,name,status\nkim@example.org,,\nother@example.org,Other,\nKIM@example.org,Kim,unsubscribed\n"
    )
    result = import_csv(engine, path, chunk_size=1)
    assert (result.added, result.duplicates) == (2, 1)
    kim = subscribers.get(engine, "kim@example.org")
    assert kim is not None and kim.name == "Kim"
    assert kim.status == "unsubscribed"  # a later line's opt-out is never lost
    assert [str(n) for n in result.notices] == ["line 4: KIM@example.org is also on line 2: merged"]


def test_existing_subscribers_are_updated(engine: Engine, write_csv: WriteCsv) -> None:
    subscribers.add(engine, "lee@example.org", name="Lee")
    path = write_csv("email,name,plan\nLEE@example.org,Lee Chang,gold\nnew@example.org,New,\n")
    result = import_csv(engine, path)
    assert (result.added, result.updated, result.unchanged) == (1, 1, 0)
    lee = subscribers.get(engine, "lee@example.org")
    assert lee is not None and lee.name == "Lee Chang" and dict(lee.attributes) == {"plan": "gold"}
    assert lee.email == "lee@example.org"  # the address stays as first given


@pytest.mark.parametrize("status", ["unsubscribed", "bounced", "complained"])
def test_opted_out_are_not_reactivated(engine: Engine, write_csv: WriteCsv, status: str) -> None:
    added = subscribers.add(engine, "out@example.org", name="Out")
    subscribers.mark_status(engine, added.id, status)
    path = write_csv("email,name,status\nout@example.org,Out Again,active\n")

    result = import_csv(engine, path)
    assert result.not_reactivated == 1
    found = subscribers.get(engine, "out@example.org")
    assert found is not None and found.status == status
    assert found.name == "Out Again"  # other fields still update
    assert "not re-activated" in str(result.notices[0])

    result = import_csv(engine, path, resubscribe=True)
    found = subscribers.get(engine, "out@example.org")
    assert found is not None and found.status == "active" and found.unsubscribed_at is None
    assert result.updated == 1 and result.not_reactivated == 0


def test_rows_without_status_do_not_change_existing_status(engine: Engine, write_csv: WriteCsv) -> None:
    subscribers.add(engine, "wait@example.org", status="pending")
    import_csv(engine, write_csv("email\nwait@example.org\n"))
    found = subscribers.get(engine, "wait@example.org")
    assert found is not None and found.status == "pending"


def test_status_column_can_unsubscribe(engine: Engine, write_csv: WriteCsv) -> None:
    subscribers.add(engine, "bye@example.org")
    path = write_csv(
        "email,status,unsubscribed_at\nbye@example.org,Unsubscribed,2024-06-01\nnew@example.org,unsubscribed,\n"
    )
    result = import_csv(engine, path)
    assert (result.added, result.updated) == (1, 1)
    bye = subscribers.get(engine, "bye@example.org")
    assert bye is not None and bye.status == "unsubscribed"
    assert bye.unsubscribed_at is not None and bye.unsubscribed_at.isoformat() == "2024-06-01T00:00:00+00:00"
    new = subscribers.get(engine, "new@example.org")
    assert new is not None and new.status == "unsubscribed" and new.unsubscribed_at is not None


def test_removed_addresses_are_not_re_added(engine: Engine, sample_csv: Path) -> None:
    import_csv(engine, sample_csv)
    assert subscribers.remove(engine, "ada@example.com")

    result = import_csv(engine, sample_csv)
    assert subscribers.get(engine, "ada@example.com") is None
    got = reasons(result)
    assert "ada@example.com was removed at their request and is suppressed" in got[2]
    assert "Ada@Example.com was removed at their request" in got[3]  # its case-duplicate too
    assert (result.added, result.rejected) == (0, 8)

    result = import_csv(engine, sample_csv, resubscribe=True)
    assert result.added == 1
    assert subscribers.get(engine, "ada@example.com") is not None
    assert not subscribers.is_suppressed(engine, "ada@example.com")


class Crash(Exception):
    pass


def test_rerun_after_a_crash_gives_the_same_result(engine: Engine, write_csv: WriteCsv) -> None:
    lines = ["email,name,status"]
    for i in range(60):
        lines.append(f"user{i}@example.org,User {i},")
        if i % 7 == 0:
            lines.append(f"USER{i}@example.org,,unsubscribed")  # a duplicate in a later chunk
    path = write_csv("\n".join(lines) + "\n")
    now = dt.datetime(2024, 10, 25, 12, 0, tzinfo=dt.UTC)
    subscribers.add(engine, "user3@example.org", name="Before", now=now)

    chunks = []

    def crash_after_three(progress: ImportResult) -> None:
        chunks.append(progress.rows)
        if len(chunks) == 3:
            raise Crash

    with pytest.raises(Crash):
        import_csv(engine, path, chunk_size=10, progress=crash_after_three, now=now)
    assert chunks == [10, 20, 30]
    assert 0 < subscribers.count(engine) < 60  # the first chunks are committed

    import_csv(engine, path, chunk_size=10, now=now)
    resumed = snapshot(engine)

    # the same file imported in one go into an emptied database
    with engine.begin() as conn:
        conn.execute(delete(table))
    subscribers.add(engine, "user3@example.org", name="Before", now=now)
    import_csv(engine, path, chunk_size=10, now=now)
    clean = snapshot(engine)

    assert len(resumed) == 60
    assert resumed == clean
    assert subscribers.count(engine, "unsubscribed") == 9


def test_not_utf8_names_line_and_byte(engine: Engine, write_csv: WriteCsv) -> None:
    path = write_csv("email,name\nann@example.org,Ann\nbea@example.org,Béa\n".encode("latin-1"))
    with pytest.raises(SubscriberError) as error:
        import_csv(engine, path)
    assert str(error.value) == (
        f"{path}: line 3 is not UTF-8 (byte 48 is 0xe9): save the file as UTF-8 and import it again"
    )


def test_byte_order_mark_is_ignored(engine: Engine, write_csv: WriteCsv) -> None:
    path = write_csv("\ufeffEmail,Name\r\nann@example.org,Ann\r\n".encode("utf-8"))
    assert import_csv(engine, path).added == 1


def test_missing_email_column(engine: Engine, write_csv: WriteCsv) -> None:
    path = write_csv("mail_to,name\nann@example.org,Ann\n")
    with pytest.raises(SubscriberError, match=r"line 1: no email column \(the header has 'mail_to', 'name'\)"):
        import_csv(engine, path)


def test_empty_file(engine: Engine, write_csv: WriteCsv) -> None:
    with pytest.raises(SubscriberError, match="the file is empty"):
        import_csv(engine, write_csv(""))


def test_two_email_columns(engine: Engine, write_csv: WriteCsv) -> None:
    with pytest.raises(SubscriberError, match="columns 'email' and 'E-mail' both give the email"):
        import_csv(engine, write_csv("email,E-mail\na@example.org,b@example.org\n"))


def test_missing_file(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(SubscriberError, match="nothing.csv: cannot read"):
        import_csv(engine, tmp_path / "nothing.csv")


def test_ragged_rows_are_rejected_one_by_one(engine: Engine, write_csv: WriteCsv) -> None:
    path = write_csv("email,name\nann@example.org\nbea@example.org,Bea,extra\ncid@example.org,Cid\n\n")
    result = import_csv(engine, path)
    assert reasons(result) == {2: "has 1 cells, the header has 2", 3: "has 3 cells, the header has 2"}
    assert result.added == 1


def test_unterminated_quote_stops_with_its_line(engine: Engine, write_csv: WriteCsv) -> None:
    path = write_csv('email,name\nann@example.org,Ann\nbea@example.org,"Bea\n' + "x" * 200_000 + "\n")
    with pytest.raises(SubscriberError, match=r"line 3: field larger than field limit"):
        import_csv(engine, path)


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        ("=1+1", "formula content '=1+1' in column 'note'"),
        ("  +SUM(A1)", "formula content '  +SUM(A1)' in column 'note'"),
        ("-2+3", "formula content '-2+3' in column 'note'"),
        ("@cmd", "formula content '@cmd' in column 'note'"),
        ("\t=1", "formula content '\\t=1' in column 'note'"),
        ("a\rb", "line break (header injection) in column 'note'"),
        ("a\u2028b", "line break (header injection) in column 'note'"),
        ("a\x07b", "control character in column 'note'"),
    ],
)
def test_injection_in_any_column_is_rejected(engine: Engine, write_csv: WriteCsv, cell: str, reason: str) -> None:
    path = tmp = write_csv("")
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        csv.writer(out).writerows([["email", "note"], ["ann@example.org", cell]])
    result = import_csv(engine, path)
    assert reasons(result) == {2: reason}


def test_plain_numbers_are_not_formulas(engine: Engine, write_csv: WriteCsv) -> None:
    result = import_csv(engine, write_csv("email,balance\nann@example.org,-12.5\nbea@example.org,+3\n"))
    assert result.added == 2
    ann = subscribers.get(engine, "ann@example.org")
    assert ann is not None and dict(ann.attributes) == {"balance": "-12.5"}


def test_bad_fields_are_rejected(engine: Engine, write_csv: WriteCsv) -> None:
    path = write_csv(
        "email,status,created_at,attributes\n"
        "a@example.org,gone,,\n"
        "b@example.org,,3024-01-01,\n"
        "c@example.org,,,[1]\n"
        "d@localhost,,,\n"
        'e@example.org,subscribed,2024-02-29,"{""k"": 1}"\n'
    )
    got = reasons(import_csv(engine, path))
    assert got[2].startswith("unknown status 'gone' in column 'status'")
    assert got[3] == "date '3024-01-01' in column 'created_at' is in the future"
    assert got[4] == "column 'attributes' is not a JSON object"
    assert got[5].startswith("invalid email address 'd@localhost'")
    e = subscribers.get(engine, "e@example.org")
    assert e is not None and e.status == "active" and dict(e.attributes) == {"k": 1}


def test_rejects_file_is_formula_safe_and_complete(engine: Engine, sample_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "rejects.csv"
    result = import_csv(engine, sample_csv, rejects_path=out)
    assert result.rejects_file == out
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["line", "reason", "email", "name", "subscribed_at", "source"]
    assert [r[0] for r in rows[1:]] == ["5", "6", "7", "9", "12", "13"]
    formula = next(r for r in rows if r[0] == "9")
    assert formula[2] == '\'=HYPERLINK("http://evil.example.net")'
    assert rows[-1][2:] == ["dave@example.com", "Dave", "2024-05-01T00:00:00Z", "website", "extra-column"]
    assert list(tmp_path.glob(".rejects.csv.*")) == []  # no temporary file left


def test_result_keeps_a_bounded_number_of_rejects(
    engine: Engine, write_csv: WriteCsv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "MAX_REPORTED", 3)
    path = write_csv("email\n" + "bad\n" * 10)
    result = import_csv(engine, path)
    assert result.rejected == 10 and len(result.rejects) == 3
