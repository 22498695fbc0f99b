"""The send ledger: one ``sends`` row per issue and one ``deliveries`` row per (issue,
subscriber), frozen when the send starts, and one ``send_batches`` row per claimed batch.

Batches are claimed atomically (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite) and durably marked in flight before their request; the claiming
process owns the batch and renews its lease while it works, so two processes never send
to the same subscriber, and only a dead owner's batch is ever called ambiguous.

Delivery states::

    pending -> in_flight -> sent | rejected          the provider answered
                         -> ambiguous                the request may have arrived (timeout
                                                     after the body left, reset before the
                                                     answer, SMTP drop after DATA), or the
                                                     owner died (its lease expired)
                         -> pending                  the failure proves nothing was accepted
    ambiguous -> sent | rejected                     a provider event proves it (reconcile)
              -> sent | pending                      an operator decides (settle_ambiguous)
    pending -> skipped                               no longer active when its batch came up

A row is pending exactly when it has no batch (``batch_id IS NULL``): PostgreSQL finds
pending rows by that, having no index on ``state``. A batch any of whose rows became
ambiguous is flagged (``send_batches.ambiguous``), and ambiguous rows are looked for in
the flagged batches only (see ``tables.deliveries``).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Connection, Engine, and_, exists, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError

from newsletter.errors import SendError
from newsletter.store.audience import receiving
from newsletter.store.db import durable_transaction, write_transaction
from newsletter.store.tables import deliveries, send_batches, sends, subscribers, webhook_events

DELIVERY_STATES = ("pending", "in_flight", "ambiguous", "sent", "rejected", "skipped")
# Provider events that prove a message was accepted, and the one that proves it was not.
ACCEPTED_EVENTS = ("processed", "delivered", "deferred", "bounce", "open", "click")
DROPPED_EVENT = "dropped"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


def new_owner() -> str:
    """This process's owner name for the batches it claims: host, pid and a random part
    (a pid can be reused; the random part tells two lives of one pid apart)."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` ran on this host and its process is gone; an owner on
    another host is judged by its lease alone."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname()[:120] or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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


def new_batch_id() -> str:
    return secrets.token_hex(8)


def claim_batch(
    engine: Engine,
    send_id: int,
    size: int,
    batch_id: str,
    *,
    owner: str,
    lease_seconds: float,
    now: dt.datetime | None = None,
    after: int = 0,
    below: bool = True,
) -> tuple[list[Claimed], int]:
    """Atomically take up to ``size`` pending rows, mark them in flight under ``batch_id``
    owned by ``owner`` with a lease of ``lease_seconds`` (durably, before any request),
    and return them with the subscriber's current data. Rows whose subscriber is no
    longer active (or was erased) become ``skipped``. Returns (claimed, skipped).

    PostgreSQL claims in one statement (see ``_PG_CLAIM``): rows picked with ``FOR
    UPDATE SKIP LOCKED``, so concurrent claimers take different rows, marked, the batch
    recorded and the rows returned joined to their subscribers. SQLite serialises
    writers; its claim is an UPDATE with a sub-select, then the batch is read back.

    ``after``: the highest row id this process claimed so far. The claim looks above
    it first: the index still holds an entry for every row claimed so far (until
    vacuum), and on PostgreSQL reading past half a million of them cost 80 ms a batch
    half-way through a million. Rows below it (given back by a failed batch) are found
    by the look from the start that follows when nothing is pending above it (``below``;
    see ``refresh_statistics`` for what to do before it).
    """
    now = now or utcnow()
    lease_until = now + dt.timedelta(seconds=lease_seconds)
    with durable_transaction(engine) as conn:
        claim = _Claim(send_id, size, batch_id, owner, now, lease_until)
        bounds = _bounds(after) if below else (after,)
        rows = (_claim_postgresql if conn.dialect.name == "postgresql" else _claim_generic)(conn, claim, bounds)
        if not rows:
            return [], 0
        claimed = [Claimed(r[0], r[1], r[2], r[3], r[4]) for r in rows if r[5] == "active"]
        gone = [r[0] for r in rows if r[5] != "active"]
        if gone:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(gone))
                .values(state="skipped", settled_at=now, error="no longer active")
            )
        if not claimed:
            _close_batch(conn, batch_id, now)
    return claimed, len(gone)


def refresh_statistics(engine: Engine) -> None:
    """PostgreSQL: read ``deliveries`` afresh for the planner (``ANALYZE``, a sample of
    30,000 rows). The statistics the freeze took say every row is pending; near the end
    of a big send the planner, believing them, looks for pending rows by walking the
    primary key past every claimed row (half a second at a million) instead of the
    nearly empty ``ix_deliveries_unclaimed``. SQLite: nothing to do."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE deliveries")
            conn.commit()


def _bounds(after: int) -> tuple[int, ...]:
    """Where claims look for pending rows: above ``after`` first, then from the start."""
    return (after, 0) if after else (0,)


class _Claim(NamedTuple):
    """What one claim writes."""

    send_id: int
    size: int
    batch_id: str
    owner: str
    now: dt.datetime
    lease_until: dt.datetime


def _claim_generic(conn: Connection, claim: _Claim, bounds: tuple[int, ...]) -> list[Any]:
    """The claim in Core statements (SQLite serialises writers, so no row locks): mark
    the rows, record the batch, read the rows back with their subscribers."""
    send_id, size, batch_id, owner, now, lease_until = claim
    taken = 0
    for bound in bounds:
        pick = (
            select(deliveries.c.id)
            .where(deliveries.c.send_id == send_id, deliveries.c.state == "pending", deliveries.c.id > bound)
            .order_by(deliveries.c.id)
            .limit(size)
        )
        taken = conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(pick.scalar_subquery()))
            .values(state="in_flight", batch_id=batch_id, claimed_at=now, attempts=deliveries.c.attempts + 1)
        ).rowcount
        if taken:
            break
    if not taken:
        return []
    conn.execute(
        insert(send_batches).values(
            batch_id=batch_id, send_id=send_id, owner=owner, state="in_flight", claimed_at=now, lease_until=lease_until
        )
    )
    return list(
        conn.execute(
            select(
                deliveries.c.id,
                deliveries.c.subscriber_id,
                subscribers.c.email,
                subscribers.c.name,
                subscribers.c.token,
                subscribers.c.status,
            )
            .select_from(deliveries.outerjoin(subscribers, subscribers.c.id == deliveries.c.subscriber_id))
            .where(deliveries.c.batch_id == batch_id)
            .order_by(deliveries.c.id)
        ).all()
    )


# PostgreSQL: the claim in one statement (one round trip, not three). The rows are picked
# (``ix_deliveries_unclaimed``: rows without a batch) and locked with SKIP LOCKED, so
# concurrent claimers take different rows; ``= ANY(ARRAY(
# ...))`` makes the UPDATE fetch them by primary key (as ``IN (sub-select)`` it was
# planned as a hash join over a sequential scan of every delivery of every send: 64-77 ms
# a batch at 200,000 rows instead of 15). The batch row is written only when rows were
# taken, and the rows come back joined to their subscribers.
_PG_CLAIM = """
WITH claimed AS (
    UPDATE deliveries SET state = 'in_flight', batch_id = %(batch_id)s, claimed_at = %(now)s,
        attempts = attempts + 1
    WHERE id = ANY(ARRAY(
        SELECT id FROM deliveries
        WHERE send_id = %(send_id)s AND batch_id IS NULL AND state = 'pending' AND id > %(bound)s
        ORDER BY id LIMIT %(size)s FOR UPDATE SKIP LOCKED))
    RETURNING id, subscriber_id
), batch AS (
    INSERT INTO send_batches (batch_id, send_id, owner, state, claimed_at, lease_until)
    SELECT %(batch_id)s, %(send_id)s, %(owner)s, 'in_flight', %(now)s, %(lease_until)s
    WHERE EXISTS (SELECT 1 FROM claimed)
)
SELECT c.id, c.subscriber_id, s.email, s.name, s.token, s.status
FROM claimed AS c LEFT JOIN subscribers AS s ON s.id = c.subscriber_id
ORDER BY c.id
"""


def _claim_postgresql(conn: Connection, claim: _Claim, bounds: tuple[int, ...]) -> list[Any]:
    params: dict[str, Any] = claim._asdict()
    for bound in bounds:
        rows = conn.exec_driver_sql(_PG_CLAIM, {**params, "bound": bound}).all()
        if rows:
            return list(rows)
    return []


def renew_leases(engine: Engine, owner: str, lease_seconds: float, now: dt.datetime | None = None) -> int:
    """Extend the lease of every batch ``owner`` is working on; the number renewed."""
    now = now or utcnow()
    with write_transaction(engine) as conn:
        return int(
            conn.execute(
                update(send_batches)
                .where(send_batches.c.owner == owner, send_batches.c.state == "in_flight")
                .values(lease_until=now + dt.timedelta(seconds=lease_seconds))
            ).rowcount
        )


def _open_rows(batch_id: str) -> list[ColumnElement[bool]]:
    """Conditions for rows of ``batch_id`` its owner may still settle: in flight, or made
    ambiguous by another process that thought the owner dead (its answer settles them)."""
    return [deliveries.c.batch_id == batch_id, deliveries.c.state.in_(("in_flight", "ambiguous"))]


def mark_sent(
    engine: Engine,
    batch_id: str,
    keys: Sequence[int] | None,
    message_id: str | None = None,
    now: dt.datetime | None = None,
    *,
    close: bool = False,
) -> None:
    """Settle accepted rows of ``batch_id`` as sent; ``keys=None``: all of its open rows.
    ``close``: the batch is done too (one transaction instead of two: the common case)."""
    now = now or utcnow()
    values = {"state": "sent", "settled_at": now, "message_id": message_id, "error": None}
    _update_rows(engine, batch_id, keys, values, close_at=now if close else None)


def mark_rejected(engine: Engine, batch_id: str, reasons: dict[int, str], now: dt.datetime | None = None) -> None:
    """Recipients the service refused for good (e.g. SMTP 550, an address SendGrid cannot
    take): not retried."""
    if not reasons:
        return
    now = now or utcnow()
    by_reason: dict[str, list[int]] = {}
    for key, reason in reasons.items():
        by_reason.setdefault(reason[:500], []).append(key)
    with write_transaction(engine) as conn:
        # One statement a reason (usually one for the whole batch), not one a recipient.
        for reason, keys in by_reason.items():
            for chunk in _chunks(keys, 900):
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_(chunk), *_open_rows(batch_id))
                    .values(state="rejected", error=reason, settled_at=now)
                )


def mark_ambiguous(engine: Engine, batch_id: str, keys: Sequence[int] | None, reason: str) -> None:
    """Rows whose request may have reached the provider: never retried blindly; provider
    events or an operator settle them. ``keys=None``: all of the batch's in-flight rows."""
    _update_rows(engine, batch_id, keys, {"state": "ambiguous", "error": reason[:500]}, only="in_flight")


def release(engine: Engine, batch_id: str, keys: Iterable[int], error: str | None = None) -> None:
    """Put in-flight rows back to pending: the failure proves the request delivered nothing."""
    _update_rows(
        engine,
        batch_id,
        list(keys),
        {"state": "pending", "batch_id": None, "claimed_at": None, "error": error[:500] if error else None},
        only="in_flight",
    )


def _update_rows(
    engine: Engine,
    batch_id: str,
    keys: Sequence[int] | None,
    values: dict[str, object],
    only: str | None = None,
    close_at: dt.datetime | None = None,
) -> None:
    if keys is not None and not keys:
        return
    where = [deliveries.c.batch_id == batch_id, deliveries.c.state == only] if only else _open_rows(batch_id)
    with write_transaction(engine) as conn:
        if values.get("state") == "ambiguous":
            _flag_ambiguous(conn, batch_id)
        if keys is None and close_at is not None and conn.dialect.name == "postgresql":
            # The whole batch settled and closed in one statement (one round trip).
            rows = update(deliveries).where(*where).values(**values).cte("settled")
            conn.execute(_closing(batch_id, close_at).add_cte(rows))
            return
        if keys is None:
            conn.execute(update(deliveries).where(*where).values(**values))
        else:
            for chunk in _chunks(list(keys), 900):
                conn.execute(update(deliveries).where(deliveries.c.id.in_(chunk), *where).values(**values))
        if close_at is not None:
            _close_batch(conn, batch_id, close_at)


def _flag_ambiguous(conn: Connection, batch_id: str) -> None:
    """Before any row of ``batch_id`` is made ambiguous, in the same transaction."""
    conn.execute(update(send_batches).where(send_batches.c.batch_id == batch_id).values(ambiguous=True))


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


def finish_batch(engine: Engine, batch_id: str, now: dt.datetime | None = None) -> None:
    """The owner is done with ``batch_id``: its lease no longer matters."""
    with write_transaction(engine) as conn:
        _close_batch(conn, batch_id, now or utcnow())


def _close_batch(conn: Connection, batch_id: str, now: dt.datetime) -> None:
    conn.execute(_closing(batch_id, now))


def _closing(batch_id: str, now: dt.datetime) -> Any:
    return (
        update(send_batches)
        .where(send_batches.c.batch_id == batch_id, send_batches.c.state == "in_flight")
        .values(state="done", lease_until=now)
    )


def _chunks(keys: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


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


def expire_dead_owners(
    engine: Engine, send_id: int, now: dt.datetime | None = None, dead: Callable[[str], bool] = owner_is_dead
) -> int:
    """Batches whose owner died (lease expired, or its process is gone from this host):
    their in-flight rows become ambiguous, since the request may have left. Returns the
    number of rows made ambiguous. A live owner's batch is never touched."""
    now = now or utcnow()
    with engine.connect() as conn:
        candidates = conn.execute(
            select(send_batches.c.batch_id, send_batches.c.owner, send_batches.c.lease_until).where(
                send_batches.c.send_id == send_id, send_batches.c.state == "in_flight"
            )
        ).all()
    expired = [(b, o, lease) for b, o, lease in candidates if lease < now or dead(o)]
    made = 0
    for batch_id, owner, lease in expired:
        reason = (
            f"the sending process {owner} stopped before the provider's answer came "
            f"(lease {'expired ' + lease.isoformat(timespec='seconds') if lease < now else 'of a dead process'})"
        )
        with durable_transaction(engine) as conn:
            won = conn.execute(
                update(send_batches)
                .where(
                    send_batches.c.batch_id == batch_id,
                    send_batches.c.state == "in_flight",
                    send_batches.c.owner == owner,
                )
                .values(state="expired", reason=reason[:500], ambiguous=True)
            ).rowcount
            if won:
                made += int(
                    conn.execute(
                        update(deliveries)
                        .where(deliveries.c.batch_id == batch_id, deliveries.c.state == "in_flight")
                        .values(state="ambiguous", error=reason[:500])
                    ).rowcount
                )
    return made


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


def settle_ambiguous(engine: Engine, send_id: int, as_state: str, *, batch_id: str | None = None) -> int:
    """An operator's decision on the ambiguous rows of a send (or of one batch): ``sent``
    (they arrived; the provider's activity log shows it) or ``pending`` (send them
    again). Rows a live process is still sending are never touched."""
    if as_state not in ("sent", "pending"):
        raise ValueError(as_state)
    conditions = _in_state(send_id, "ambiguous")
    if batch_id is not None:
        conditions.append(deliveries.c.batch_id == batch_id)
    values: dict[str, object] = {"state": as_state}
    if as_state == "pending":
        values.update(batch_id=None, claimed_at=None, error=None)
    else:
        values.update(settled_at=utcnow(), error="settled as sent by an operator")
    with write_transaction(engine) as conn:
        return int(conn.execute(update(deliveries).where(and_(*conditions)).values(**values)).rowcount)


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
