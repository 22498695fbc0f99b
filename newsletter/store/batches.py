"""A claimed batch as its owner holds it: the claim (rows marked in flight, durably,
before any request), the fencing token that proves the batch is still the owner's at
every write and before every request, the lease the owner renews, the settle that
records outcomes and closes the batch with its last row, and the takeovers.

A batch's life (``send_batches.state``, ``generation`` the fencing token)::

    claim: in_flight, generation 1, a lease
      --settle(close) by its owner--> done          every row sent, rejected, ambiguous
                                                    or given back, in that one write
      --lease ran out, or its process is gone--> expired, generation + 1, its in-flight
                                                 rows ambiguous (expire_dead_owners)
      --its owner stops before the answers came--> the same (abandon)
    done | expired --an operator settles its ambiguous rows--> generation + 1
                                                 (ledger.settle_ambiguous)

Every write of the owner and every request it makes first proves ``(owner, generation)``
with the batch still in flight, in the same transaction as the write (``settle``) or
just before the request leaves (``prove``): an owner that was paused past its lease and
lost the batch gets ``BatchLostError`` and touches nothing more. Nothing else ever moves
a batch back to in flight, so a proof cannot come true again.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, insert, select, update

from newsletter.errors import BatchLostError
from newsletter.store.db import durable_transaction, write_transaction
from newsletter.store.tables import deliveries, send_batches, subscribers

FIRST_GENERATION = 1


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Claimed(NamedTuple):
    """A ledger row claimed for a batch, with what the message needs."""

    key: int  # the delivery row's id
    subscriber_id: int
    email: str
    name: str
    token: str


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
    started: bool = True,
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

    ``started``: the rows' requests may leave from now on (a request for the whole
    batch). False for a backend that sends one message a recipient: each row is marked
    started (``Settlement.started``) just before its message, so a batch whose owner died
    gives back the rows it never started instead of calling them ambiguous.
    """
    now = now or utcnow()
    lease_until = now + dt.timedelta(seconds=lease_seconds)
    with durable_transaction(engine) as conn:
        claim = _Claim(send_id, size, batch_id, owner, now, lease_until, now if started else None)
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
            conn.execute(_closing(batch_id, now))
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
    started_at: dt.datetime | None


def _claim_generic(conn: Connection, claim: _Claim, bounds: tuple[int, ...]) -> list[Any]:
    """The claim in Core statements (SQLite serialises writers, so no row locks): mark
    the rows, record the batch, read the rows back with their subscribers."""
    send_id, size, batch_id, owner, now, lease_until, started_at = claim
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
            .values(state="in_flight", batch_id=batch_id, claimed_at=started_at, attempts=deliveries.c.attempts + 1)
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
    return _batch_rows(conn, batch_id)


# PostgreSQL: the claim in one statement (one round trip, not three). The rows are picked
# (``ix_deliveries_unclaimed``: rows without a batch) and locked with SKIP LOCKED, so
# concurrent claimers take different rows; ``= ANY(ARRAY(
# ...))`` makes the UPDATE fetch them by primary key (as ``IN (sub-select)`` it was
# planned as a hash join over a sequential scan of every delivery of every send: 64-77 ms
# a batch at 200,000 rows instead of 15). The batch row is written only when rows were
# taken, and the rows come back joined to their subscribers.
_PG_CLAIM = """
WITH claimed AS (
    UPDATE deliveries SET state = 'in_flight', batch_id = %(batch_id)s, claimed_at = %(started_at)s,
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


class Fence(NamedTuple):
    """What proves a batch is still its owner's: the owner's name and the batch's
    generation when it was claimed. Any takeover increments the generation."""

    batch_id: str
    owner: str
    generation: int = FIRST_GENERATION


def claimed_rows(engine: Engine, batch_id: str, owner: str) -> tuple[list[Claimed], int] | None:
    """The rows of ``batch_id`` as its claim left them, when the claim's answer was lost
    (the database went away during the commit) and it did commit: (claimed, skipped),
    or None when there is no such batch of ``owner`` (the claim did not commit)."""
    with engine.connect() as conn:
        found = conn.execute(
            select(send_batches.c.state).where(send_batches.c.batch_id == batch_id, send_batches.c.owner == owner)
        ).first()
        if found is None:
            return None
        rows = _batch_rows(conn, batch_id, with_state=True)
    claimed = [Claimed(r[0], r[1], r[2], r[3], r[4]) for r in rows if r[6] == "in_flight"]
    return claimed, sum(1 for r in rows if r[6] == "skipped")


def _batch_rows(conn: Connection, batch_id: str, *, with_state: bool = False) -> list[Any]:
    """A batch's rows joined to their subscribers, in key order."""
    columns = [
        deliveries.c.id,
        deliveries.c.subscriber_id,
        subscribers.c.email,
        subscribers.c.name,
        subscribers.c.token,
        subscribers.c.status,
    ]
    if with_state:
        columns.append(deliveries.c.state)
    return list(
        conn.execute(
            select(*columns)
            .select_from(deliveries.outerjoin(subscribers, subscribers.c.id == deliveries.c.subscriber_id))
            .where(deliveries.c.batch_id == batch_id)
            .order_by(deliveries.c.id)
        ).all()
    )


def renew_leases(
    engine: Engine,
    owner: str,
    lease_seconds: float,
    now: dt.datetime | None = None,
    *,
    keep_out: Collection[str] = (),
) -> list[str]:
    """Extend the lease of every batch ``owner`` is working on (still in flight: a batch
    taken over is not), but those in ``keep_out`` (batches whose outcome it could not
    record: their lease must run out so that they are reported); the batches renewed."""
    now = now or utcnow()
    where = [send_batches.c.owner == owner, send_batches.c.state == "in_flight"]
    if keep_out:
        where.append(send_batches.c.batch_id.not_in(list(keep_out)))
    with write_transaction(engine) as conn:
        return list(
            conn.execute(
                update(send_batches)
                .where(*where)
                .values(lease_until=now + dt.timedelta(seconds=lease_seconds))
                .returning(send_batches.c.batch_id)
            ).scalars()
        )


def prove(engine: Engine, fence: Fence, lease_seconds: float, now: dt.datetime | None = None) -> dt.datetime:
    """Prove the batch is still the owner's and renew its lease, before a request leaves;
    the new end of the lease. ``BatchLostError`` when it was taken over."""
    now = now or utcnow()
    lease_until = now + dt.timedelta(seconds=lease_seconds)
    with write_transaction(engine) as conn:
        if not _fenced(conn, fence, lease_until=lease_until):
            _lost(conn, fence, closing=False)
    return lease_until


@dataclass(frozen=True)
class Settlement:
    """Outcomes to record for rows of one batch. ``sent=None``: every row of the batch
    still in flight was accepted (the common case: one statement). ``released``: rows
    given back to pending, the failure proving nothing was delivered. ``started``: rows
    whose message is about to leave (see ``claim_batch``), written durably."""

    sent: Sequence[int] | None = ()
    message_id: str | None = None
    rejected: Mapping[int, str] = field(default_factory=dict)
    ambiguous: Mapping[int, str] = field(default_factory=dict)
    released: Mapping[int, str] = field(default_factory=dict)
    started: Sequence[int] = ()

    @property
    def rows(self) -> int:
        """How many rows this names (the rows still in flight count as none for ``None``)."""
        return len(self.sent or ()) + len(self.rejected) + len(self.ambiguous) + len(self.released)


def settle(
    engine: Engine, fence: Fence, outcome: Settlement, *, close: bool = False, now: dt.datetime | None = None
) -> bool:
    """Record ``outcome`` for rows of the fenced batch in one transaction that first
    proves the fence; ``close``: this write settles the batch's last rows, and closes it.
    ``BatchLostError`` when the batch was taken over: nothing is written. Safe to call
    again when the answer to a commit was lost (rows are written only while in flight,
    and a close that landed is recognised). Returns whether the batch was closed: a
    batch with rows still in flight after the write stays open, and owned."""
    now = now or utcnow()
    # A started mark must survive a power loss like the claim: lost, an expired batch
    # would give back a row whose message left.
    transaction = durable_transaction if outcome.started else write_transaction
    with transaction(engine) as conn:
        if close and outcome.sent is None and not outcome.rows and conn.dialect.name == "postgresql":
            # The whole batch accepted and closed in one statement (one round trip).
            params = {**fence._asdict(), "now": now, "message_id": outcome.message_id}
            if not conn.exec_driver_sql(_PG_SETTLE_ALL, params).scalar_one():
                _lost(conn, fence, closing=True)
            return True
        if not _fenced(conn, fence):
            _lost(conn, fence, closing=close)
            return True  # this very write landed before: see _lost
        _write_rows(conn, fence.batch_id, outcome, now)
        if not close:
            return False
        if outcome.sent is not None and _has_in_flight(conn, fence.batch_id):
            return False
        conn.execute(_closing(fence.batch_id, now))
    return True


# PostgreSQL: fence, settle and close in one statement. ``fence`` locks the batch row
# and matches only while the batch is in flight at the owner's generation; the rows are
# written only when it matched (a takeover that committed first fails the re-check of
# the locked row, one that comes later waits for this commit and then finds it done).
_PG_SETTLE_ALL = """
WITH fence AS (
    UPDATE send_batches SET state = 'done', lease_until = %(now)s
    WHERE batch_id = %(batch_id)s AND owner = %(owner)s AND generation = %(generation)s AND state = 'in_flight'
    RETURNING batch_id
), settled AS (
    UPDATE deliveries SET state = 'sent', settled_at = %(now)s, message_id = %(message_id)s, error = NULL
    WHERE batch_id = %(batch_id)s AND state = 'in_flight' AND EXISTS (SELECT 1 FROM fence)
)
SELECT count(*) FROM fence
"""


def _fenced(conn: Connection, fence: Fence, *, lease_until: dt.datetime | None = None) -> bool:
    """In the write transaction, before its writes: the batch is in flight at the fence's
    generation (the update locks its row until the commit). Renews the lease if given."""
    values: dict[str, object] = {"lease_until": lease_until} if lease_until else {"generation": fence.generation}
    return bool(
        conn.execute(
            update(send_batches)
            .where(
                send_batches.c.batch_id == fence.batch_id,
                send_batches.c.owner == fence.owner,
                send_batches.c.generation == fence.generation,
                send_batches.c.state == "in_flight",
            )
            .values(**values)
        ).rowcount
    )


def _lost(conn: Connection, fence: Fence, *, closing: bool) -> None:
    """A fence that did not hold: raise ``BatchLostError`` naming what the batch is now,
    unless ``closing`` and the owner's own close already landed (a retried commit)."""
    row = conn.execute(
        select(send_batches.c.owner, send_batches.c.generation, send_batches.c.state).where(
            send_batches.c.batch_id == fence.batch_id
        )
    ).first()
    if row is None:
        raise BatchLostError(fence.batch_id, fence.generation, "no such batch")
    if closing and (row.owner, row.generation, row.state) == (fence.owner, fence.generation, "done"):
        return
    taken = "taken over" if row.generation != fence.generation else row.state
    raise BatchLostError(fence.batch_id, fence.generation, f"now {taken} at generation {row.generation}")


def _write_rows(conn: Connection, batch_id: str, outcome: Settlement, now: dt.datetime) -> None:
    """The row updates of a settle: only rows of the batch still in flight are written."""
    open_rows = [deliveries.c.batch_id == batch_id, deliveries.c.state == "in_flight"]
    if outcome.ambiguous:
        _flag_ambiguous(conn, batch_id)
    sent = {"state": "sent", "settled_at": now, "message_id": outcome.message_id, "error": None}
    if outcome.sent is None:
        conn.execute(update(deliveries).where(*open_rows).values(**sent))
    else:
        _by_keys(conn, open_rows, outcome.sent, sent)
    groups: list[tuple[Mapping[int, str], dict[str, object]]] = [
        (outcome.rejected, {"state": "rejected", "settled_at": now}),
        (outcome.ambiguous, {"state": "ambiguous"}),
        (outcome.released, {"state": "pending", "batch_id": None, "claimed_at": None}),
    ]
    for reasons, values in groups:
        # One statement a reason (usually one for the whole batch), not one a recipient.
        by_reason: dict[str, list[int]] = {}
        for key, reason in reasons.items():
            by_reason.setdefault(reason[:500], []).append(key)
        for reason, keys in by_reason.items():
            _by_keys(conn, open_rows, keys, {**values, "error": reason})
    if outcome.started:
        _by_keys(conn, [*open_rows, deliveries.c.claimed_at.is_(None)], outcome.started, {"claimed_at": now})


def _by_keys(conn: Connection, where: list[Any], keys: Sequence[int], values: Mapping[str, object]) -> None:
    keys = list(keys)
    for start in range(0, len(keys), 900):
        chunk = keys[start : start + 900]
        conn.execute(update(deliveries).where(deliveries.c.id.in_(chunk), *where).values(**values))


def _has_in_flight(conn: Connection, batch_id: str) -> bool:
    return (
        conn.execute(
            select(deliveries.c.id).where(deliveries.c.batch_id == batch_id, deliveries.c.state == "in_flight").limit(1)
        ).first()
        is not None
    )


def _flag_ambiguous(conn: Connection, batch_id: str) -> None:
    """Before any row of ``batch_id`` is made ambiguous, in the same transaction."""
    conn.execute(update(send_batches).where(send_batches.c.batch_id == batch_id).values(ambiguous=True))


def _closing(batch_id: str, now: dt.datetime) -> Any:
    return (
        update(send_batches)
        .where(send_batches.c.batch_id == batch_id, send_batches.c.state == "in_flight")
        .values(state="done", lease_until=now)
    )


def abandon(engine: Engine, fence: Fence, reason: str) -> int:
    """The owner gives up a batch whose requests may have left (it is stopping before
    their answers came): the batch expires a generation later, so the worker still
    waiting for the answer cannot write, and its in-flight rows become ambiguous.
    Returns the rows made ambiguous (0 when the batch was no longer the owner's)."""
    with durable_transaction(engine) as conn:
        if not _fenced(conn, fence):
            return 0
        return _expire(conn, fence.batch_id, reason)


def _expire(conn: Connection, batch_id: str, reason: str) -> int:
    """Take a batch over: expired, one generation later; its in-flight rows whose request
    may have left (started) ambiguous, the others (a per-message backend had not come to
    them) back to pending. Returns the rows made ambiguous."""
    conn.execute(
        update(send_batches)
        .where(send_batches.c.batch_id == batch_id)
        .values(state="expired", reason=reason[:500], ambiguous=True, generation=send_batches.c.generation + 1)
    )
    in_flight = [deliveries.c.batch_id == batch_id, deliveries.c.state == "in_flight"]
    conn.execute(
        update(deliveries)
        .where(*in_flight, deliveries.c.claimed_at.is_(None))
        .values(state="pending", batch_id=None, error="given back: its message had not been started")
    )
    return int(
        conn.execute(update(deliveries).where(*in_flight).values(state="ambiguous", error=reason[:500])).rowcount
    )


def expire_dead_owners(
    engine: Engine, send_id: int, now: dt.datetime | None = None, dead: Callable[[str], bool] = owner_is_dead
) -> int:
    """Batches whose owner died (lease expired, or its process is gone from this host):
    taken over a generation later (see ``_expire``), their in-flight rows ambiguous,
    since the request may have left. Returns the number of rows made ambiguous. A live
    owner's batch is never touched: the takeover re-checks the lease in its transaction."""
    now = now or utcnow()
    with engine.connect() as conn:
        candidates = conn.execute(
            select(send_batches.c.batch_id, send_batches.c.owner, send_batches.c.lease_until).where(
                send_batches.c.send_id == send_id, send_batches.c.state == "in_flight"
            )
        ).all()
    made = 0
    for batch_id, owner, lease in candidates:
        gone = dead(owner)
        if lease >= now and not gone:
            continue
        reason = (
            f"the sending process {owner} stopped before the provider's answer came "
            f"(lease {'expired ' + lease.isoformat(timespec='seconds') if lease < now else 'of a dead process'})"
        )
        with durable_transaction(engine) as conn:
            still = [send_batches.c.batch_id == batch_id, send_batches.c.state == "in_flight"]
            still.append(send_batches.c.owner == owner)
            if not gone:  # judged by the lease: it must still be out (the owner may have renewed it)
                still.append(send_batches.c.lease_until < now)
            won = conn.execute(update(send_batches).where(*still).values(lease_until=send_batches.c.lease_until))
            if won.rowcount:
                made += _expire(conn, batch_id, reason)
    return made


def sweep(engine: Engine, send_id: int) -> int:
    """Rows whose state contradicts their batch: in flight in a batch that is no longer
    in flight (closed after a ledger write failed, by code older than the fence). Nobody
    knows whether their request left: they become ambiguous, reported like a dead owner's,
    and their batch is flagged. Returns the rows repaired."""
    with engine.connect() as conn:
        orphaned = (
            conn.execute(
                select(deliveries.c.batch_id)
                .distinct()
                .select_from(deliveries.join(send_batches, send_batches.c.batch_id == deliveries.c.batch_id))
                .where(
                    deliveries.c.send_id == send_id,
                    deliveries.c.state == "in_flight",
                    send_batches.c.state != "in_flight",
                )
            )
            .scalars()
            .all()
        )
    made = 0
    for batch_id in orphaned:
        reason = "left in flight when its batch was closed (a ledger write failed): the request may have left"
        with durable_transaction(engine) as conn:
            # Re-read in the transaction: the batch cannot return to in flight, so its
            # in-flight rows are still orphans.
            made += _expire(conn, batch_id, reason)
    return made
