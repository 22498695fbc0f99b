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

from sqlalchemy import Connection, Engine, func, select, update

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


def _subscriber(conn: Connection, email: str | None) -> tuple[int, str] | None:
    if not email:
        return None
    try:
        key = key_for(email)
    except SubscriberError:
        return None
    row = conn.execute(select(subscribers.c.id, subscribers.c.status).where(subscribers.c.email_key == key)).first()
    return None if row is None else (int(row.id), str(row.status))


def _set_status(conn: Connection, subscriber_id: int, current: str, status: str, now: dt.datetime) -> bool:
    if _RANK.get(status, 0) <= _RANK.get(current, 0):
        return False
    values: dict[str, Any] = {
        "status": status,
        "updated_at": now,
        "confirmation_hash": None,
        "confirmation_expires_at": None,
    }
    if status == "unsubscribed":
        values["unsubscribed_at"] = now
    conn.execute(update(subscribers).where(subscribers.c.id == subscriber_id).values(**values))
    return True


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
) -> Applied:
    """Record and apply a webhook request's events in one transaction; an event whose
    ``sg_event_id`` was seen before is skipped, so SendGrid's retries change nothing.
    Then the ambiguous ledger rows of the batches these events name are reconciled.
    The DSN reader (``newsletter.bounces``) hands its bounces in here too."""
    from newsletter.store import ledger

    now = now or dt.datetime.now(dt.UTC)
    applied = Applied()
    batches: set[str] = set()
    with write_transaction(engine) as conn:
        for raw in raw_events:
            applied.received += 1
            event = parse_event(raw)
            if event is None:
                applied.ignored += 1
                continue
            found = _subscriber(conn, event.email)
            # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING.
            inserted = conn.execute(
                insert_ignoring_conflicts(conn, webhook_events, "sg_event_id")
                .values(
                    sg_event_id=event.sg_event_id,
                    event=event.event,
                    issue=event.issue,
                    batch_id=event.batch_id,
                    subscriber_id=found[0] if found else None,
                    delivery_id=event.delivery_id,
                    reason=event.reason,
                    bounce_type=event.bounce_type,
                    occurred_at=event.occurred_at,
                    received_at=now,
                )
                .returning(webhook_events.c.sg_event_id)
            ).first()
            if inserted is None:
                applied.duplicates += 1
                continue
            applied.recorded += 1
            if event.batch_id:
                batches.add(event.batch_id)
            status = event.status
            if event.bounce_type == "soft" and found and _soft_limit_reached(conn, found[0], now, soft_bounces):
                status = "bounced"
            if status and found and _set_status(conn, found[0], found[1], status, now):
                applied.status_changes[status] = applied.status_changes.get(status, 0) + 1
    if batches:
        applied.reconciled = ledger.reconcile(engine, batch_ids=sorted(batches), now=now).total
    return applied


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
