"""The send ledger: one ``sends`` row per issue and one ``deliveries`` row per (issue,
subscriber), frozen when the send starts. Batches are claimed atomically (``FOR UPDATE
SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), marked in flight before the
request and sent after it, so that two processes never send to the same subscriber and
a crash leaves only the batch that was in flight as *ambiguous*.

Delivery states: pending -> in_flight -> sent | rejected; pending -> skipped (no longer
active when its batch came up); in_flight rows left by a dead process are ambiguous
until an operator settles them (as sent, or back to pending).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import Engine, and_, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError

from newsletter.store.db import write_transaction
from newsletter.store.tables import deliveries, sends, subscribers

DELIVERY_STATES = ("pending", "in_flight", "sent", "rejected", "skipped")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Send:
    """One issue's send: when its audience was frozen and whether it is finished."""

    id: int
    issue: str
    subject: str
    audience: int
    created_at: dt.datetime
    finished_at: dt.datetime | None


class Claimed(NamedTuple):
    """A ledger row claimed for a batch, with what the message needs."""

    key: int  # the delivery row's id
    subscriber_id: int
    email: str
    name: str
    token: str


@dataclass(frozen=True)
class Counts:
    """How many ledger rows of one send are in each state."""

    pending: int = 0
    in_flight: int = 0
    sent: int = 0
    rejected: int = 0
    skipped: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.in_flight + self.sent + self.rejected + self.skipped

    @property
    def settled(self) -> bool:
        return self.pending == 0 and self.in_flight == 0


def _send_from_row(row: object) -> Send:
    return Send(
        id=row.id, issue=row.issue, subject=row.subject, audience=row.audience,  # type: ignore[attr-defined]
        created_at=row.created_at, finished_at=row.finished_at,  # type: ignore[attr-defined]
    )


def get_send(engine: Engine, issue: str) -> Send | None:
    with engine.connect() as conn:
        row = conn.execute(select(sends).where(sends.c.issue == issue)).first()
    return _send_from_row(row) if row else None


def start_send(engine: Engine, issue: str, subject: str, now: dt.datetime | None = None) -> tuple[Send, bool]:
    """The issue's send, creating it and freezing the audience (every active subscriber)
    in one transaction if it does not exist yet. Returns (send, created)."""
    now = now or utcnow()
    existing = get_send(engine, issue)
    if existing:
        return existing, False
    try:
        with write_transaction(engine) as conn:
            # Re-check inside the write lock: another process may have just created it.
            row = conn.execute(select(sends).where(sends.c.issue == issue)).first()
            if row:
                return _send_from_row(row), False
            send_id = conn.execute(
                insert(sends).values(issue=issue, subject=subject, audience=0, created_at=now)
                .returning(sends.c.id)
            ).scalar_one()
            conn.execute(
                insert(deliveries).from_select(
                    ["send_id", "subscriber_id", "state"],
                    select(literal(send_id), subscribers.c.id, literal("pending"))
                    .where(subscribers.c.status == "active")
                    .order_by(subscribers.c.id),
                )
            )
            frozen = conn.execute(  # rowcount of INSERT ... SELECT is -1 on some drivers
                select(func.count()).select_from(deliveries).where(deliveries.c.send_id == send_id)
            ).scalar_one()
            conn.execute(update(sends).where(sends.c.id == send_id).values(audience=frozen))
    except IntegrityError:  # PostgreSQL: the other process's insert committed first
        found = get_send(engine, issue)
        assert found is not None
        return found, False
    send = get_send(engine, issue)
    assert send is not None
    return send, True


def new_batch_id() -> str:
    return secrets.token_hex(8)


def claim_batch(engine: Engine, send_id: int, size: int, batch_id: str, now: dt.datetime | None = None
                ) -> tuple[list[Claimed], int]:
    """Atomically take up to ``size`` pending rows, mark them in flight under ``batch_id``
    (durably, before any request), and return them with the subscriber's current data.
    Rows whose subscriber is no longer active (or was erased) become ``skipped``.
    Returns (claimed, skipped).

    One UPDATE with a sub-select claims the rows (``FOR UPDATE SKIP LOCKED`` on
    PostgreSQL, so concurrent claimers take different rows; SQLite serialises writers);
    the batch is then read back by its id.
    """
    now = now or utcnow()
    pick = (
        select(deliveries.c.id)
        .where(deliveries.c.send_id == send_id, deliveries.c.state == "pending")
        .order_by(deliveries.c.id)
        .limit(size)
    )
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        taken = conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(pick.scalar_subquery()))
            .values(state="in_flight", batch_id=batch_id, claimed_at=now, attempts=deliveries.c.attempts + 1)
        ).rowcount
        if not taken:
            return [], 0
        rows = conn.execute(
            select(deliveries.c.id, deliveries.c.subscriber_id, subscribers.c.email,
                   subscribers.c.name, subscribers.c.token, subscribers.c.status)
            .select_from(deliveries.outerjoin(subscribers, subscribers.c.id == deliveries.c.subscriber_id))
            .where(deliveries.c.batch_id == batch_id)
            .order_by(deliveries.c.id)
        ).all()
        claimed = [Claimed(r[0], r[1], r[2], r[3], r[4]) for r in rows if r[5] == "active"]
        gone = [r[0] for r in rows if r[5] != "active"]
        if gone:
            conn.execute(update(deliveries).where(deliveries.c.id.in_(gone))
                         .values(state="skipped", settled_at=now, error="no longer active"))
    return claimed, len(gone)


def mark_sent(engine: Engine, keys: Sequence[int], message_id: str | None = None,
              now: dt.datetime | None = None, batch_id: str | None = None) -> None:
    """Settle accepted rows as sent. With ``batch_id``, ``keys`` are the whole batch's
    in-flight rows and one statement by batch settles them."""
    if not keys:
        return
    if batch_id is not None:
        with write_transaction(engine) as conn:
            conn.execute(update(deliveries)
                         .where(deliveries.c.batch_id == batch_id, deliveries.c.state == "in_flight")
                         .values(state="sent", settled_at=now or utcnow(), message_id=message_id))
        return
    _settle(engine, keys, "sent", now=now, message_id=message_id)


def mark_rejected(engine: Engine, reasons: dict[int, str], now: dt.datetime | None = None) -> None:
    """Recipients the service refused for good (e.g. SMTP 550): not retried."""
    with write_transaction(engine) as conn:
        for key, reason in reasons.items():
            conn.execute(update(deliveries).where(deliveries.c.id == key, deliveries.c.state == "in_flight")
                         .values(state="rejected", error=reason[:500], settled_at=now or utcnow()))


def release(engine: Engine, keys: Iterable[int], error: str | None = None) -> None:
    """Put in-flight rows back to pending: the request certainly did not deliver them."""
    keys = list(keys)
    if not keys:
        return
    with write_transaction(engine) as conn:
        for chunk in _chunks(keys, 900):
            conn.execute(update(deliveries)
                         .where(deliveries.c.id.in_(chunk), deliveries.c.state == "in_flight")
                         .values(state="pending", batch_id=None, claimed_at=None,
                                 error=error[:500] if error else None))


def _settle(engine: Engine, keys: Sequence[int], state: str, *, now: dt.datetime | None,
            message_id: str | None = None) -> None:
    with write_transaction(engine) as conn:
        for chunk in _chunks(list(keys), 900):
            conn.execute(update(deliveries)
                         .where(deliveries.c.id.in_(chunk), deliveries.c.state == "in_flight")
                         .values(state=state, settled_at=now or utcnow(), message_id=message_id))


def _chunks(keys: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(keys), size):
        yield keys[start:start + size]


def counts(engine: Engine, send_id: int) -> Counts:
    with engine.connect() as conn:
        rows = conn.execute(
            select(deliveries.c.state, func.count())
            .where(deliveries.c.send_id == send_id)
            .group_by(deliveries.c.state)
        ).all()
    return Counts(**{state: n for state, n in rows})


def in_flight_batches(engine: Engine, send_id: int) -> list[tuple[str, int, dt.datetime]]:
    """(batch id, rows, claimed at) of the batches still in flight: ambiguous unless the
    process that claimed them is still running."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(deliveries.c.batch_id, func.count(), func.min(deliveries.c.claimed_at))
            .where(deliveries.c.send_id == send_id, deliveries.c.state == "in_flight")
            .group_by(deliveries.c.batch_id)
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def settle_ambiguous(engine: Engine, send_id: int, as_state: str, older_than: dt.datetime | None = None) -> int:
    """An operator's decision on the in-flight rows of a send: ``sent`` (they were
    delivered; check the service's activity log) or ``pending`` (send them again)."""
    if as_state not in ("sent", "pending"):
        raise ValueError(as_state)
    conditions = [deliveries.c.send_id == send_id, deliveries.c.state == "in_flight"]
    if older_than is not None:
        conditions.append(deliveries.c.claimed_at < older_than)
    values: dict[str, object] = {"state": as_state}
    if as_state == "pending":
        values.update(batch_id=None, claimed_at=None)
    else:
        values.update(settled_at=utcnow(), error="settled as sent by an operator")
    with write_transaction(engine) as conn:
        return int(conn.execute(update(deliveries).where(and_(*conditions)).values(**values)).rowcount)


def finish_send(engine: Engine, send_id: int, now: dt.datetime | None = None) -> bool:
    """Mark the send finished if every row is settled; True if it is (now or before)."""
    with write_transaction(engine) as conn:
        open_rows = conn.execute(
            select(func.count()).select_from(deliveries)
            .where(deliveries.c.send_id == send_id, deliveries.c.state.in_(("pending", "in_flight")))
        ).scalar_one()
        if open_rows:
            return False
        conn.execute(update(sends).where(sends.c.id == send_id, sends.c.finished_at.is_(None))
                     .values(finished_at=now or utcnow()))
    return True
