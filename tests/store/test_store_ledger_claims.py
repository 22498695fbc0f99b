"""Batch claims that start above the worker's last claimed row (see
``batches.claim_batch``): nothing pending below it is ever left behind; what a claim
returns and records; where each row state is found."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from newsletter.store import batches, ledger, subscribers
from newsletter.store.batches import Fence, Settlement


def test_claims_above_the_last_one_still_find_rows_given_back_below_it(engine: Engine) -> None:
    for i in range(10):
        subscribers.add(engine, f"reader{i}@example.org")
    send, _ = ledger.start_send(engine, "2024-10-25", "Subject")

    def claim(after: int) -> list[int]:
        claimed, _ = batches.claim_batch(
            engine, send.id, 3, batches.new_batch_id(), owner="me:1:a", lease_seconds=60, after=after
        )
        return [c.key for c in claimed]

    first = claim(0)
    second = claim(first[-1])
    assert second == [k + 3 for k in first]
    with engine.connect() as conn:
        batch_id = conn.exec_driver_sql(f"SELECT batch_id FROM deliveries WHERE id = {first[0]:d}").scalar_one()
    released = dict.fromkeys(first, "refused: nothing was delivered")
    assert batches.settle(engine, Fence(batch_id, "me:1:a"), Settlement(released=released), close=True)
    third = claim(second[-1])
    fourth = claim(third[-1])
    assert len(fourth) == 1  # the last row above
    assert claim(fourth[-1]) == first  # nothing above: the rows given back, from the start
    assert claim(first[-1]) == []
    assert sorted(second + third + fourth + first) == sorted({*first, *second, *third, *fourth})
    assert ledger.counts(engine, send.id).in_flight == 10


def test_a_claim_returns_its_subscribers_skips_the_gone_and_records_its_batch(engine: Engine) -> None:
    for i in range(6):
        subscribers.add(engine, f"reader{i}@example.org", name=f"Reader {i}")
    send, _ = ledger.start_send(engine, "2024-10-25", "Subject")
    subscribers.unsubscribe(engine, "reader1@example.org")
    subscribers.remove(engine, "reader2@example.org")  # erased: no subscriber row left

    claimed, skipped = batches.claim_batch(engine, send.id, 4, "b-1", owner="me:1:a", lease_seconds=60)

    assert [c.email for c in claimed] == ["reader0@example.org", "reader3@example.org"]
    assert [c.name for c in claimed] == ["Reader 0", "Reader 3"]
    assert all(c.token for c in claimed) and skipped == 2
    counts = ledger.counts(engine, send.id)
    assert (counts.in_flight, counts.skipped, counts.pending) == (2, 2, 2)
    [batch] = ledger.batches(engine, send.id, "in_flight")
    assert (batch.batch_id, batch.owner, batch.rows, batch.state) == ("b-1", "me:1:a", 2, "in_flight")

    batches.settle(engine, Fence("b-1", "me:1:a"), Settlement(sent=None, message_id="msg-1"), close=True)
    assert ledger.counts(engine, send.id).sent == 2
    assert ledger.batches(engine, send.id, "in_flight") == []
    assert batches.expire_dead_owners(engine, send.id) == 0  # closed: its lease no longer matters


def test_a_batch_is_claimed_and_settled_in_one_statement_each_on_postgresql(engine: Engine) -> None:
    from sqlalchemy import event

    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite claims in three statements under its write lock")
    for i in range(5):
        subscribers.add(engine, f"reader{i}@example.org")
    send, _ = ledger.start_send(engine, "2024-10-25", "Subject")
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        claimed, _ = batches.claim_batch(engine, send.id, 5, "b-1", owner="me:1:a", lease_seconds=60)
        assert len(claimed) == 5 and len(statements) == 1
        batches.settle(engine, Fence("b-1", "me:1:a"), Settlement(sent=None, message_id="msg-1"), close=True)
        assert len(statements) == 2
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert ledger.counts(engine, send.id).sent == 5 and ledger.batches(engine, send.id, "in_flight") == []


def _misplaced(engine: Engine) -> tuple[int, int]:
    """(rows whose pending state and missing batch disagree, ambiguous rows in a batch
    not flagged ambiguous): both must stay 0, whatever happens to a send."""
    with engine.connect() as conn:
        pending = conn.exec_driver_sql(
            "SELECT count(*) FROM deliveries WHERE (state = 'pending') <> (batch_id IS NULL)"
        ).scalar_one()
        unflagged = conn.exec_driver_sql(
            "SELECT count(*) FROM deliveries d JOIN send_batches b ON b.batch_id = d.batch_id "
            "WHERE d.state = 'ambiguous' AND NOT b.ambiguous"
        ).scalar_one()
    return int(pending), int(unflagged)


def test_pending_rows_have_no_batch_and_ambiguous_rows_are_in_flagged_batches(engine: Engine) -> None:
    """What the lookups without an index on ``state`` rely on (PostgreSQL), through every
    way a row changes state: claimed, sent, given back, ambiguous (the owner's answer
    lost; the owner dead), an operator's "send again"."""
    for i in range(12):
        subscribers.add(engine, f"reader{i}@example.org")
    send, _ = ledger.start_send(engine, "2024-10-25", "Subject")
    claim = [
        [c.key for c in batches.claim_batch(engine, send.id, 3, f"b-{n}", owner=f"me:1:{n}", lease_seconds=60)[0]]
        for n in range(4)
    ]
    assert _misplaced(engine) == (0, 0)
    batches.settle(engine, Fence("b-0", "me:1:0"), Settlement(sent=None, message_id="msg-0"), close=True)
    refused = dict.fromkeys(claim[1][:2], "refused: nothing was delivered")
    batches.settle(engine, Fence("b-1", "me:1:1"), Settlement(released=refused))
    lost = dict.fromkeys(claim[2][:1], "timed out after the request left")
    batches.settle(engine, Fence("b-2", "me:1:2"), Settlement(ambiguous=lost))
    assert _misplaced(engine) == (0, 0)
    assert ledger.has_rows(engine, send.id, "pending") and ledger.has_rows(engine, send.id, "ambiguous")
    assert [(b.batch_id, b.rows) for b in ledger.batches(engine, send.id, "ambiguous")] == [("b-2", 1)]

    # b-3's owner died: its in-flight rows become ambiguous and its batch is flagged
    assert batches.expire_dead_owners(engine, send.id, dead=lambda owner: owner == "me:1:3") == 3
    assert _misplaced(engine) == (0, 0)
    assert {b.batch_id for b in ledger.batches(engine, send.id, "ambiguous")} == {"b-2", "b-3"}
    assert {b.batch_id for b in ledger.batches(engine, send.id, "in_flight")} == {"b-1", "b-2"}

    assert ledger.settle_ambiguous(engine, send.id, "pending", batch_id="b-3").settled == 3
    assert _misplaced(engine) == (0, 0)
    assert [b.batch_id for b in ledger.batches(engine, send.id, "ambiguous")] == ["b-2"]
    counts = ledger.counts(engine, send.id)
    assert (counts.sent, counts.pending, counts.in_flight, counts.ambiguous) == (3, 2 + 3, 1 + 2, 1)
    # the rows given back and the ones to send again are claimed again
    again, _ = batches.claim_batch(engine, send.id, 20, "b-again", owner="me:1:again", lease_seconds=60)
    assert [c.key for c in again] == sorted(claim[1][:2] + claim[3])
    assert not ledger.has_rows(engine, send.id, "pending") and _misplaced(engine) == (0, 0)


def test_marking_rows_sent_writes_no_index_on_postgresql(engine: Engine) -> None:
    """On PostgreSQL no index of ``deliveries`` names a column the settle writes, and the
    table leaves room on each page: the settle is a heap-only update (see migration 0012)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no heap-only updates; it keeps its index on state")
    with engine.connect() as conn:
        definitions = (
            conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'deliveries' AND schemaname = current_schema()"
            )
            .scalars()
            .all()
        )
        options = conn.exec_driver_sql(
            "SELECT reloptions FROM pg_class WHERE relname = 'deliveries' AND relnamespace = current_schema()::regnamespace"
        ).scalar_one()
    assert len(definitions) == 4, definitions  # primary key, (send, subscriber), batch, unclaimed
    for written in ("state", "settled_at", "message_id", "error"):
        assert not [d for d in definitions if written in d], written
    assert options == ["fillfactor=50"]
