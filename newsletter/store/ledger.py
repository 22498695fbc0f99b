"""The send ledger: one ``sends`` row per issue and one ``deliveries`` row per (issue,
subscriber), frozen when the send starts, and one ``send_batches`` row per claimed batch.

This module holds what the operator sees and decides: the sends, their rows' states,
the batches still in flight or ambiguous, the provider's events that settle ambiguous
rows, and the operator's own settle. How a sending process claims, fences and settles a
batch is in ``batches``.

Delivery states::

    pending -> in_flight -> sent | rejected          the provider answered
                         -> ambiguous                the request may have arrived (timeout
                                                     after the body left, reset before the
                                                     answer, SMTP drop after DATA), or the
                                                     owner died (its lease expired)
                         -> pending                  the failure proves nothing was accepted
    ambiguous -> sent | rejected                     a provider event proves it (reconcile)
              -> sent | pending                      an operator decides (settle_ambiguous),
                                                     never in a batch whose owner is live
    pending -> skipped                               no longer active when its batch came up

A row is pending exactly when it has no batch (``batch_id IS NULL``): PostgreSQL finds
pending rows by that, having no index on ``state``. A batch any of whose rows became
ambiguous is flagged (``send_batches.ambiguous``), and ambiguous rows are looked for in
the flagged batches only (see ``tables.deliveries``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, exists, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError

from newsletter.errors import SendError
from newsletter.store.audience import receiving
from newsletter.store.batches import utcnow
from newsletter.store.db import write_transaction
from newsletter.store.tables import deliveries, send_batches, sends, subscribers, webhook_events

DELIVERY_STATES = ("pending", "in_flight", "ambiguous", "sent", "rejected", "skipped")
# Provider events that prove a message was accepted, and the one that proves it was not.
ACCEPTED_EVENTS = ("processed", "delivered", "deferred", "bounce", "open", "click")
DROPPED_EVENT = "dropped"


@dataclass(frozen=True)
class Send:
    """One issue's send: when its audience was frozen, what was pinned, whether it is done."""

    id: int
    issue: str
    subject: str
    audience: int
    created_at: dt.datetime
    finished_at: dt.datetime | None
    content_hash: str | None
    gave_up_at: dt.datetime | None


@dataclass(frozen=True)
class Counts:
    """How many ledger rows of one send are in each state."""

    pending: int = 0
    in_flight: int = 0
    ambiguous: int = 0
    sent: int = 0
    rejected: int = 0
    skipped: int = 0

    @property
    def total(self) -> int:
        return self.unsent + self.sent + self.rejected + self.skipped

    @property
    def unsent(self) -> int:
        return self.pending + self.in_flight + self.ambiguous

    @property
    def settled(self) -> bool:
        return self.unsent == 0


@dataclass(frozen=True)
class BatchInfo:
    """A batch with rows still in flight or ambiguous: who owns it and since when."""

    batch_id: str
    owner: str
    state: str  # in_flight (owner working), done, expired (owner died)
    rows: int  # rows of the batch in the asked-for delivery state
    claimed_at: dt.datetime
    lease_until: dt.datetime
    reason: str | None

    def live(self, now: dt.datetime) -> bool:
        return self.state == "in_flight" and self.lease_until >= now


def _send_from_row(row: Any) -> Send:
    return Send(
        id=row.id,
        issue=row.issue,
        subject=row.subject,
        audience=row.audience,
        created_at=row.created_at,
        finished_at=row.finished_at,
        content_hash=row.content_hash,
        gave_up_at=row.gave_up_at,
    )


def get_send(engine: Engine, issue: str) -> Send | None:
    with engine.connect() as conn:
        row = conn.execute(select(sends).where(sends.c.issue == issue)).first()
    return _send_from_row(row) if row else None


def start_send(
    engine: Engine,
    issue: str,
    subject: str,
    content_hash: str | None = None,
    *,
    allow_empty: bool = False,
    now: dt.datetime | None = None,
) -> tuple[Send, bool]:
    """The issue's send, creating it and freezing the audience (every active subscriber
    whose delivery is not paused at ``now``, see ``audience.receiving``)
    in one transaction if it does not exist yet, with the rendered email's hash pinned.
    An empty audience is refused (SendError, nothing frozen) unless ``allow_empty``.
    Returns (send, created)."""
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
                insert(sends)
                .values(issue=issue, subject=subject, audience=0, created_at=now, content_hash=content_hash)
                .returning(sends.c.id)
            ).scalar_one()
            conn.execute(
                insert(deliveries).from_select(
                    ["send_id", "subscriber_id", "state"],
                    select(literal(send_id), subscribers.c.id, literal("pending"))
                    .where(receiving(now))
                    .order_by(subscribers.c.id),
                )
            )
            frozen = conn.execute(  # rowcount of INSERT ... SELECT is -1 on some drivers
                select(func.count()).select_from(deliveries).where(deliveries.c.send_id == send_id)
            ).scalar_one()
            if not frozen and not allow_empty:
                raise _EmptyAudience()
            conn.execute(update(sends).where(sends.c.id == send_id).values(audience=frozen))
            if conn.dialect.name == "postgresql":
                # The planner's idea of deliveries predates a million new rows: without
                # this, reading a claimed batch back ran as a parallel bitmap scan.
                conn.exec_driver_sql("ANALYZE deliveries")
    except _EmptyAudience:
        raise SendError(
            f"issue {issue}: there are no active subscribers; nothing was frozen and "
            "the issue stays unsent (add subscribers, or pass --allow-empty)"
        ) from None
    except IntegrityError:  # PostgreSQL: the other process's insert committed first
        found = get_send(engine, issue)
        assert found is not None
        return found, False
    send = get_send(engine, issue)
    assert send is not None
    return send, True


class _EmptyAudience(Exception):
    """Rolls the freeze back."""


def pin_content(engine: Engine, send_id: int, subject: str, content_hash: str) -> None:
    """Pin a changed email to a send already under way (``send --allow-changed``)."""
    with write_transaction(engine) as conn:
        conn.execute(update(sends).where(sends.c.id == send_id).values(subject=subject, content_hash=content_hash))


def _in_flagged_batches(send_id: int | None = None) -> ColumnElement[bool]:
    """Rows of the batches flagged ambiguous (of one send): where ambiguous rows are."""
    flagged = select(send_batches.c.batch_id).where(send_batches.c.ambiguous)
    if send_id is not None:
        flagged = flagged.where(send_batches.c.send_id == send_id)
    return deliveries.c.batch_id.in_(flagged)


def _in_state(send_id: int, state: str) -> list[ColumnElement[bool]]:
    """Conditions for the rows of a send in ``state`` that an index finds on either
    engine: pending rows have no batch, in-flight rows are in batches in flight,
    ambiguous rows in flagged batches."""
    where = [deliveries.c.send_id == send_id, deliveries.c.state == state]
    if state == "pending":
        where.append(deliveries.c.batch_id.is_(None))
    elif state == "in_flight":
        live = select(send_batches.c.batch_id).where(
            send_batches.c.send_id == send_id, send_batches.c.state == "in_flight"
        )
        where.append(deliveries.c.batch_id.in_(live))
    elif state == "ambiguous":
        where.append(_in_flagged_batches(send_id))
    return where


def counts(engine: Engine, send_id: int) -> Counts:
    with engine.connect() as conn:
        return state_counts(conn, send_id)


def state_counts(conn: Connection, send_id: int) -> Counts:
    """How many rows of the send are in each state, on ``conn`` (the issue report reads
    them in its own transaction)."""
    rows = conn.execute(
        select(deliveries.c.state, func.count()).where(deliveries.c.send_id == send_id).group_by(deliveries.c.state)
    ).all()
    return Counts(**dict(rows))


def has_rows(engine: Engine, send_id: int, state: str) -> bool:
    """Whether any row of the send is in ``state``: a few index probes (see
    ``_in_state``: in-flight rows are looked for in the batches in flight), where
    ``counts`` reads every row (a million at the end of a big send)."""
    with engine.connect() as conn:
        return conn.execute(select(deliveries.c.id).where(*_in_state(send_id, state)).limit(1)).first() is not None


def batches(engine: Engine, send_id: int, state: str) -> list[BatchInfo]:
    """The batches of a send holding rows in delivery ``state`` (``in_flight``: of the
    batches in flight, or ``ambiguous``), oldest first, with their owner, lease and the
    rows' reason."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                deliveries.c.batch_id,
                send_batches.c.owner,
                send_batches.c.state,
                func.count(),
                send_batches.c.claimed_at,
                send_batches.c.lease_until,
                func.max(deliveries.c.error),
            )
            .select_from(deliveries.join(send_batches, send_batches.c.batch_id == deliveries.c.batch_id))
            .where(*_in_state(send_id, state))
            .group_by(
                deliveries.c.batch_id,
                send_batches.c.owner,
                send_batches.c.state,
                send_batches.c.claimed_at,
                send_batches.c.lease_until,
            )
            .order_by(send_batches.c.claimed_at)
        ).all()
    return [BatchInfo(r[0], r[1], r[2], int(r[3]), r[4], r[5], r[6]) for r in rows]


@dataclass(frozen=True)
class Reconciled:
    """What provider events settled."""

    sent: int = 0
    rejected: int = 0

    @property
    def total(self) -> int:
        return self.sent + self.rejected


def _event_for(row_event: Iterable[str]) -> ColumnElement[bool]:
    """EXISTS: a webhook event of these types names this delivery row (by the delivery id
    in custom_args, or by batch and subscriber for events that carry no delivery id)."""
    e = webhook_events
    return exists().where(
        e.c.event.in_(list(row_event)),
        or_(
            e.c.delivery_id == deliveries.c.id,
            and_(
                e.c.delivery_id.is_(None),
                e.c.batch_id == deliveries.c.batch_id,
                e.c.subscriber_id == deliveries.c.subscriber_id,
            ),
        ),
    )


def reconcile(
    engine: Engine,
    *,
    send_id: int | None = None,
    batch_ids: Sequence[str] | None = None,
    now: dt.datetime | None = None,
) -> Reconciled:
    """Settle ambiguous rows that the provider's own events prove: ``dropped`` ->
    rejected (SendGrid received it and will not deliver it), ``processed``,
    ``delivered``, ``deferred``, ``bounce``, ``open``, ``click`` -> sent. Limited to one
    send or to some batches; both None: every send."""
    now = now or utcnow()
    scope = [deliveries.c.state == "ambiguous", _in_flagged_batches(send_id)]
    if send_id is not None:
        scope.append(deliveries.c.send_id == send_id)
    if batch_ids is not None:
        if not batch_ids:
            return Reconciled()
        scope.append(deliveries.c.batch_id.in_(list(batch_ids)))
    with write_transaction(engine) as conn:
        rejected = conn.execute(
            update(deliveries)
            .where(*scope, _event_for([DROPPED_EVENT]))
            .values(state="rejected", settled_at=now, error="dropped by the provider (its event webhook said so)")
        ).rowcount
        sent = conn.execute(
            update(deliveries)
            .where(*scope, _event_for(ACCEPTED_EVENTS))
            .values(state="sent", settled_at=now, error=None)
        ).rowcount
    return Reconciled(sent=int(sent), rejected=int(rejected))


@dataclass(frozen=True)
class OperatorSettle:
    """What ``settle_ambiguous`` did: rows settled, and the batches it would not touch
    because their owner is still sending (its lease is live)."""

    settled: int
    refused: list[BatchInfo]


def settle_ambiguous(
    engine: Engine, send_id: int, as_state: str, *, batch_id: str | None = None, now: dt.datetime | None = None
) -> OperatorSettle:
    """An operator's decision on the ambiguous rows of a send (or of one batch): ``sent``
    (they arrived; the provider's activity log shows it) or ``pending`` (send them
    again). A batch still in flight is refused: its owner may be sending (a live lease),
    or was not reported dead yet (``--status`` and ``--reconcile`` do that first). Each
    batch settled is taken over, a generation later, so its owner (a paused process that
    wakes up) can neither write nor send for it again."""
    if as_state not in ("sent", "pending"):
        raise ValueError(as_state)
    now = now or utcnow()
    found = [b for b in batches(engine, send_id, "ambiguous") if batch_id is None or b.batch_id == batch_id]
    refused = [b for b in found if b.state == "in_flight"]
    wanted = [b.batch_id for b in found if b.state != "in_flight"]
    values: dict[str, object] = {"state": as_state}
    if as_state == "pending":
        values.update(batch_id=None, claimed_at=None, error=None)
    else:
        values.update(settled_at=now, error="settled as sent by an operator")
    settled = 0
    with write_transaction(engine) as conn:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            taken = (
                conn.execute(
                    update(send_batches)
                    .where(send_batches.c.batch_id.in_(chunk), send_batches.c.state != "in_flight")
                    .values(generation=send_batches.c.generation + 1)
                    .returning(send_batches.c.batch_id)
                )
                .scalars()
                .all()
            )
            if taken:
                settled += int(
                    conn.execute(
                        update(deliveries)
                        .where(deliveries.c.batch_id.in_(taken), deliveries.c.state == "ambiguous")
                        .values(**values)
                    ).rowcount
                )
    return OperatorSettle(settled, refused)


def finish_send(engine: Engine, send_id: int, now: dt.datetime | None = None) -> bool:
    """Mark the send finished if every row is settled; True if it is (now or before)."""
    with write_transaction(engine) as conn:
        open_rows = conn.execute(
            select(func.count())
            .select_from(deliveries)
            .where(deliveries.c.send_id == send_id, deliveries.c.state.in_(("pending", "in_flight", "ambiguous")))
        ).scalar_one()
        if open_rows:
            return False
        conn.execute(
            update(sends)
            .where(sends.c.id == send_id, sends.c.finished_at.is_(None))
            .values(finished_at=now or utcnow())
        )
    return True


def unfinished_sends(engine: Engine) -> list[Send]:
    """Sends with rows still unsettled that nobody has given up on, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(sends)
            .where(sends.c.finished_at.is_(None), sends.c.gave_up_at.is_(None))
            .order_by(sends.c.created_at)
        ).all()
    return [_send_from_row(r) for r in rows]


def give_up(engine: Engine, send_id: int, now: dt.datetime | None = None) -> bool:
    """Record that the scheduler stopped resuming a send; True for the one caller that
    recorded it (two schedulers on one database notify the editors once)."""
    with write_transaction(engine) as conn:
        return bool(
            conn.execute(
                update(sends)
                .where(sends.c.id == send_id, sends.c.gave_up_at.is_(None))
                .values(gave_up_at=now or utcnow())
            ).rowcount
        )
