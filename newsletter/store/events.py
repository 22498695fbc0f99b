"""SendGrid event webhook events, applied once each: the ``webhook_events`` table keeps
every event by its ``sg_event_id`` (a replayed event changes nothing), bounces, drops,
spam reports and unsubscribes change the subscriber's status (a soft bounce only once
``SoftBounces.limit`` of them came within its window), delivered, open and click
events are kept for the per-issue statistics, and events for the rows of an ambiguous
batch settle them in the ledger (``ledger.reconcile``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, Engine, func, select, text, update

from newsletter.errors import SubscriberError
from newsletter.store.addresses import key_for
from newsletter.store.db import insert_ignoring_conflicts, write_transaction
from newsletter.store.tables import subscribers, webhook_events

# custom_args the SendGrid sender puts in every personalization (senders/sendgrid.py);
# SendGrid hands them back as top-level event fields. The short names are accepted too.
ISSUE_FIELDS: Final = ("newsletter_issue", "issue")
BATCH_FIELDS: Final = ("newsletter_batch", "batch_id")
DELIVERY_FIELDS: Final = ("newsletter_delivery",)

# Statuses only ever move up this ladder: a complaint is not undone by a later bounce,
# and nothing here re-activates anyone (that takes a fresh double opt-in).
_RANK: Final = {"pending": 0, "active": 0, "unsubscribed": 1, "bounced": 2, "complained": 3}

# SendGrid's "dropped" reasons that mean the address must not be mailed again.
_DROPPED: Final = {
    "bounced address": "bounced",
    "invalid": "bounced",
    "invalid address": "bounced",
    "spam reporting address": "complained",
    "unsubscribed address": "unsubscribed",
}
STAT_EVENTS: Final = frozenset(
    {
        "processed",
        "delivered",
        "deferred",
        "open",
        "click",
        "bounce",
        "dropped",
        "spamreport",
        "unsubscribe",
        "group_unsubscribe",
        "group_resubscribe",
    }
)


@dataclass(frozen=True)
class Event:
    """One SendGrid event, reduced to what the newsletter keeps."""

    sg_event_id: str
    event: str
    email: str | None
    issue: str | None
    batch_id: str | None
    delivery_id: int | None  # the ledger row, from custom_args
    reason: str | None
    occurred_at: dt.datetime | None
    status: str | None  # the subscriber status it implies, if any
    bounce_type: str | None = None  # "hard" or "soft" for a bounce


@dataclass(frozen=True)
class SoftBounces:
    """How many soft bounces (SendGrid's ``blocked``, a 4.x.x DSN) within how many days
    mark an address bounced: ``bounces.soft_limit`` and ``bounces.soft_window_days``."""

    limit: int = 3
    window_days: int = 30


@dataclass
class Applied:
    """What one webhook request did."""

    received: int = 0
    recorded: int = 0
    duplicates: int = 0
    ignored: int = 0  # no sg_event_id, or an event type we do not know
    status_changes: dict[str, int] = field(default_factory=dict)
    reconciled: int = 0  # ambiguous ledger rows these events settled


def _text(value: Any, limit: int) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value[:limit]


def _first(raw: Mapping[str, Any], names: Iterable[str], limit: int) -> str | None:
    for name in names:
        value = _text(raw.get(name), limit)
        if value:
            return value
    return None


def bounce_type(event: str, raw: Mapping[str, Any]) -> str | None:
    """``hard`` or ``soft`` for a bounce event (SendGrid's type ``blocked`` is a
    temporary refusal), None for any other event."""
    if event != "bounce":
        return None
    return "hard" if str(raw.get("type") or "bounce").lower() == "bounce" else "soft"


def implied_status(event: str, raw: Mapping[str, Any]) -> str | None:
    """The subscriber status an event implies: bounced, complained, unsubscribed or None."""
    if event == "bounce":
        # "blocked" is SendGrid's soft bounce (a temporary refusal): keep mailing.
        return "bounced" if bounce_type(event, raw) == "hard" else None
    if event == "dropped":
        return _DROPPED.get(str(raw.get("reason") or "").strip().lower())
    if event == "spamreport":
        return "complained"
    if event in ("unsubscribe", "group_unsubscribe"):
        return "unsubscribed"
    return None


def parse_event(raw: Mapping[str, Any]) -> Event | None:
    """``raw`` as an ``Event``, or None when it cannot be kept (no id, unknown type)."""
    sg_event_id = raw.get("sg_event_id")
    name = raw.get("event")
    if not isinstance(sg_event_id, str) or not 0 < len(sg_event_id) <= 100:
        return None
    if not isinstance(name, str) or name not in STAT_EVENTS:
        return None
    occurred_at = None
    timestamp = raw.get("timestamp")
    if isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool):
        try:
            occurred_at = dt.datetime.fromtimestamp(timestamp, dt.UTC)
        except (OverflowError, OSError, ValueError):
            occurred_at = None
    reason = _first(raw, ("reason", "response", "url") if name != "click" else ("url",), 500)
    delivery = _first(raw, DELIVERY_FIELDS, 20)
    return Event(
        sg_event_id=sg_event_id,
        event=name,
        email=_text(raw.get("email"), 320),
        issue=_first(raw, ISSUE_FIELDS, 80),
        batch_id=_first(raw, BATCH_FIELDS, 32),
        delivery_id=int(delivery) if delivery and delivery.isdigit() and len(delivery) < 19 else None,
        reason=reason,
        occurred_at=occurred_at,
        status=implied_status(name, raw),
        bounce_type=bounce_type(name, raw),
    )


# Events whose reader is not kept unless tracking is per_subscriber (config.Tracking):
# an aggregate open or click is counted, never tied to a subscriber or a ledger row.
READER_EVENTS: Final = frozenset({"open", "click"})
_LOOKUP_CHUNK: Final = 500  # addresses per IN (...) lookup: well under SQLite's variable limit


def _subscribers(conn: Connection, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
    """email_key -> (id, status) of the known subscribers among ``keys``."""
    found: dict[str, tuple[int, str]] = {}
    ordered = sorted(set(keys))
    for at in range(0, len(ordered), _LOOKUP_CHUNK):
        chunk = ordered[at : at + _LOOKUP_CHUNK]
        for row in conn.execute(
            select(subscribers.c.email_key, subscribers.c.id, subscribers.c.status).where(
                subscribers.c.email_key.in_(chunk)
            )
        ):
            found[str(row.email_key)] = (int(row.id), str(row.status))
    return found


def _key(email: str | None) -> str | None:
    if not email:
        return None
    try:
        return key_for(email)
    except SubscriberError:
        return None


def _set_statuses(conn: Connection, changed: dict[int, str], now: dt.datetime) -> None:
    """One UPDATE per new status for the subscribers whose status moved up."""
    by_status: dict[str, list[int]] = {}
    for subscriber_id, status in changed.items():
        by_status.setdefault(status, []).append(subscriber_id)
    for status, ids in by_status.items():
        values: dict[str, Any] = {
            "status": status,
            "updated_at": now,
            "confirmation_hash": None,
            "confirmation_expires_at": None,
        }
        if status == "unsubscribed":
            values["unsubscribed_at"] = now
        for at in range(0, len(ids), _LOOKUP_CHUNK):
            conn.execute(update(subscribers).where(subscribers.c.id.in_(ids[at : at + _LOOKUP_CHUNK])).values(**values))


def _soft_limit_reached(conn: Connection, subscriber_id: int, now: dt.datetime, soft: SoftBounces) -> bool:
    since = now - dt.timedelta(days=soft.window_days)
    count = conn.execute(
        select(func.count())
        .select_from(webhook_events)
        .where(
            webhook_events.c.subscriber_id == subscriber_id,
            webhook_events.c.bounce_type == "soft",
            func.coalesce(webhook_events.c.occurred_at, webhook_events.c.received_at) >= since,
        )
    ).scalar_one()
    return int(count) >= soft.limit


def apply_events(
    engine: Engine,
    raw_events: Iterable[Mapping[str, Any]],
    *,
    now: dt.datetime | None = None,
    soft_bounces: SoftBounces = SoftBounces(),
    anonymous: frozenset[str] = READER_EVENTS,
) -> Applied:
    """Record and apply a webhook request's events in one transaction; an event whose
    ``sg_event_id`` was seen before is skipped, so SendGrid's retries change nothing.
    Events named in ``anonymous`` (opens and clicks unless tracking is per_subscriber)
    are kept without their subscriber and ledger row. A soft bounce that brings its
    subscriber to ``soft_bounces`` within the window marks them bounced. Then the
    ambiguous ledger rows of the batches these events name are reconciled. The DSN
    reader (``newsletter.bounces``) hands its bounces in here too.

    One lookup of the addresses and one multi-row INSERT per request, not a query per
    event: SendGrid posts up to about a thousand events at a time."""
    from newsletter.store import ledger

    now = now or dt.datetime.now(dt.UTC)
    applied = Applied()
    parsed: list[Event] = []
    for raw in raw_events:
        applied.received += 1
        event = parse_event(raw)
        if event is None:
            applied.ignored += 1
        else:
            parsed.append(event)
    batches: set[str] = set()
    with write_transaction(engine) as conn:
        keys = {e.email: _key(e.email) for e in parsed if e.email and (e.event not in anonymous or e.status)}
        known = _subscribers(conn, (k for k in keys.values() if k))
        rows: list[dict[str, Any]] = []
        owners: dict[str, tuple[int, str] | None] = {}
        for event in parsed:
            reader = event.event not in anonymous
            key = keys.get(event.email) if event.email else None
            found = known.get(key) if key else None
            owners.setdefault(event.sg_event_id, found)
            rows.append(
                {
                    "sg_event_id": event.sg_event_id,
                    "event": event.event,
                    "issue": event.issue,
                    "batch_id": event.batch_id,
                    "subscriber_id": found[0] if found and reader else None,
                    "delivery_id": event.delivery_id if reader else None,
                    "reason": event.reason,
                    "bounce_type": event.bounce_type,
                    "occurred_at": event.occurred_at,
                    "received_at": now,
                }
            )
        recorded: set[str] = set()
        if rows and conn.dialect.name == "postgresql":
            recorded = _insert_unnested(conn, rows)
        elif rows:
            # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING.
            statement = insert_ignoring_conflicts(conn, webhook_events, "sg_event_id").returning(
                webhook_events.c.sg_event_id
            )
            recorded = {str(r[0]) for r in conn.execute(statement, rows)}
        statuses = dict(known.values())
        changed: dict[int, str] = {}
        for event in parsed:
            if event.sg_event_id not in recorded:
                applied.duplicates += 1
                continue
            recorded.discard(event.sg_event_id)  # a repeat within the request is a duplicate too
            applied.recorded += 1
            if event.batch_id:
                batches.add(event.batch_id)
            found = owners.get(event.sg_event_id)
            status = event.status
            # counted after the insert, in the same transaction: this bounce is one of them
            if event.bounce_type == "soft" and found and _soft_limit_reached(conn, found[0], now, soft_bounces):
                status = "bounced"
            if status and found and _RANK.get(status, 0) > _RANK.get(statuses[found[0]], 0):
                statuses[found[0]] = changed[found[0]] = status
                applied.status_changes[status] = applied.status_changes.get(status, 0) + 1
        _set_statuses(conn, changed, now)
    batches = _with_ambiguous_rows(engine, batches)
    if batches:
        applied.reconciled = ledger.reconcile(engine, batch_ids=sorted(batches), now=now).total
    return applied


_UNNEST_TYPES: Final = {
    "sg_event_id": "text[]",
    "event": "text[]",
    "issue": "text[]",
    "batch_id": "text[]",
    "subscriber_id": "bigint[]",
    "delivery_id": "bigint[]",
    "reason": "text[]",
    "bounce_type": "text[]",
    "occurred_at": "timestamptz[]",
    "received_at": "timestamptz[]",
}


def _insert_unnested(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """PostgreSQL: a request's events as one INSERT ... SELECT FROM unnest(arrays), ten
    parameters instead of ten thousand (psycopg parses every placeholder of a multi-row
    VALUES, which cost more than the insert)."""
    columns = list(_UNNEST_TYPES)
    arrays = ", ".join(f"CAST(:{c} AS {t})" for c, t in _UNNEST_TYPES.items())
    statement = text(
        f"INSERT INTO webhook_events ({', '.join(columns)}) SELECT * FROM unnest({arrays}) "
        "ON CONFLICT (sg_event_id) DO NOTHING RETURNING sg_event_id"
    )
    params = {c: [row[c] for row in rows] for c in columns}
    return {str(r[0]) for r in conn.execute(statement, params)}


def _with_ambiguous_rows(engine: Engine, batches: set[str]) -> set[str]:
    """The batches among ``batches`` that have ambiguous ledger rows (usually none): those
    flagged when a row of theirs was made ambiguous, read by primary key, instead of an
    UPDATE that visits every row of every batch a request names."""
    from newsletter.store.tables import send_batches

    if not batches:
        return batches
    with engine.connect() as conn:
        flagged = conn.execute(
            select(send_batches.c.batch_id).where(
                send_batches.c.batch_id.in_(sorted(batches)), send_batches.c.ambiguous
            )
        ).scalars()
        return {str(b) for b in flagged}


ONE_CLICK: Final = "one-click"  # the reason of an unsubscribe through the newsletter's own link
_RECENT_SENDS: Final = 12


def record_unsubscribe(engine: Engine, subscriber_id: int, now: dt.datetime) -> str | None:
    """Count an unsubscribe through the newsletter's own link (one-click, RFC 8058) for
    the latest of the recent issues sent to the subscriber, once per issue and reader,
    without naming the reader. Returns that issue, or None when none of them went to
    them."""
    import hashlib

    from newsletter.store.tables import deliveries, sends

    with write_transaction(engine) as conn:
        recent = select(sends.c.id).order_by(sends.c.id.desc()).limit(_RECENT_SENDS).subquery()
        row = conn.execute(
            select(sends.c.id, sends.c.issue)
            .join(deliveries, deliveries.c.send_id == sends.c.id)
            .where(deliveries.c.subscriber_id == subscriber_id, sends.c.id.in_(select(recent.c.id)))
            .order_by(sends.c.id.desc())
            .limit(1)
        ).first()
        if row is None:
            return None
        digest = hashlib.sha256(f"unsubscribe:{row.id}:{subscriber_id}".encode("ascii")).hexdigest()[:40]
        conn.execute(
            insert_ignoring_conflicts(conn, webhook_events, "sg_event_id").values(
                sg_event_id=f"own-{digest}",
                event="unsubscribe",
                issue=row.issue,
                reason=ONE_CLICK,
                occurred_at=now,
                received_at=now,
            )
        )
    return str(row.issue)


@dataclass(frozen=True)
class IssueStats:
    """Per-issue figures from the webhook: events of each type, and distinct subscribers
    who opened or clicked (Apple Mail Privacy Protection inflates opens)."""

    issue: str
    events: dict[str, int]
    unique_opens: int
    unique_clicks: int


def issue_stats(engine: Engine, issue: str) -> IssueStats:
    """What SendGrid reported for ``issue`` so far."""
    table = webhook_events
    with engine.connect() as conn:
        rows = conn.execute(
            select(table.c.event, func.count()).where(table.c.issue == issue).group_by(table.c.event)
        ).all()
        unique: dict[str, int] = dict(
            conn.execute(
                select(table.c.event, func.count(table.c.subscriber_id.distinct()))
                .where(table.c.issue == issue, table.c.event.in_(("open", "click")))
                .group_by(table.c.event)
            ).all()
        )
    return IssueStats(
        issue=issue,
        events={str(e): int(n) for e, n in rows},
        unique_opens=int(unique.get("open", 0)),
        unique_clicks=int(unique.get("click", 0)),
    )
