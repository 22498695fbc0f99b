"""What a reader may do for themselves on the preferences page, found by their token:
change their name, pause delivery for a number of weeks (or resume it), and take away
everything stored about them (``export_subscriber``). Unsubscribing and erasing use
``subscribers.unsubscribe_by_token`` and ``subscribers.remove``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from newsletter.errors import SubscriberError
from newsletter.store.db import write_transaction
from newsletter.store.subscribers import Subscriber, check_name, consent_history, from_row, utcnow
from newsletter.store.tables import OPTED_OUT, deliveries, sends, subscribers, webhook_events, welcomes

PAUSE_WEEKS = range(1, 9)  # a pause of 1 to 8 weeks


def paused_until(engine: Engine, subscriber_id: int) -> dt.datetime | None:
    """When this subscriber's pause ends (None: not paused, or the column is empty)."""
    with engine.connect() as conn:
        found: dt.datetime | None = conn.execute(
            select(subscribers.c.paused_until).where(subscribers.c.id == subscriber_id)
        ).scalar_one_or_none()
    return found


def _by_token(conn: Connection, token: str) -> Subscriber:
    row = conn.execute(select(subscribers).where(subscribers.c.token == token).with_for_update()).first()
    if row is None:
        raise SubscriberError("this preferences link is not valid")
    return from_row(row)


def _change(engine: Engine, token: str, now: dt.datetime, **values: Any) -> Subscriber:
    with write_transaction(engine) as conn:
        found = _by_token(conn, token)
        conn.execute(update(subscribers).where(subscribers.c.id == found.id).values(updated_at=now, **values))
        return from_row(conn.execute(select(subscribers).where(subscribers.c.id == found.id)).one())


def rename(engine: Engine, token: str, name: str, *, now: dt.datetime | None = None) -> Subscriber:
    """The reader's new name (one line, at most 200 characters; empty removes it)."""
    return _change(engine, token, now or utcnow(), name=check_name(name))


def pause(engine: Engine, token: str, weeks: int, *, now: dt.datetime | None = None) -> dt.datetime:
    """Pause delivery for ``weeks`` (1-8) from ``now``; returns when it resumes. A
    subscriber who opted out has nothing to pause."""
    if weeks not in PAUSE_WEEKS:
        raise SubscriberError(f"a pause lasts {PAUSE_WEEKS.start} to {PAUSE_WEEKS.stop - 1} weeks, not {weeks}")
    now = now or utcnow()
    until = now + dt.timedelta(weeks=weeks)
    with write_transaction(engine) as conn:
        found = _by_token(conn, token)
        if found.status in OPTED_OUT or found.status == "pending":
            raise SubscriberError(f"delivery cannot be paused for a subscriber who is {found.status}")
        conn.execute(update(subscribers).where(subscribers.c.id == found.id).values(paused_until=until, updated_at=now))
    return until


def resume(engine: Engine, token: str, *, now: dt.datetime | None = None) -> Subscriber:
    """End a pause now: the next issue is delivered again."""
    return _change(engine, token, now or utcnow(), paused_until=None)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def export_subscriber(engine: Engine, subscriber_id: int) -> dict[str, Any]:
    """Everything stored about one subscriber, as JSON-ready data (GDPR art. 15 and 20):
    the record, the consent history, the issues sent to them, the delivery service's
    events that name them and their welcome mail. The unsubscribe token is left out:
    it is a credential, not data about them."""
    with engine.connect() as conn:
        row = conn.execute(select(subscribers).where(subscribers.c.id == subscriber_id)).first()
        if row is None:
            raise SubscriberError(f"no subscriber with id {subscriber_id}")
        record = row._mapping
        sent = conn.execute(
            select(sends.c.issue, deliveries.c.state, deliveries.c.settled_at)
            .select_from(deliveries.join(sends, sends.c.id == deliveries.c.send_id))
            .where(deliveries.c.subscriber_id == subscriber_id)
            .order_by(deliveries.c.id)
        ).all()
        events = conn.execute(
            select(
                webhook_events.c.event,
                webhook_events.c.issue,
                webhook_events.c.reason,
                webhook_events.c.bounce_type,
                webhook_events.c.occurred_at,
                webhook_events.c.received_at,
            )
            .where(webhook_events.c.subscriber_id == subscriber_id)
            .order_by(webhook_events.c.received_at, webhook_events.c.sg_event_id)
        ).all()
        welcome = conn.execute(
            select(welcomes.c.state, welcomes.c.sent_at).where(welcomes.c.subscriber_id == subscriber_id)
        ).first()
    secret = {"token", "confirmation_hash", "confirmation_expires_at"}
    data: dict[str, Any] = {
        key: (_iso(value) if isinstance(value, dt.datetime) else value)
        for key, value in record.items()
        if key not in secret
    }
    return {
        "subscriber": data,
        "consents": [
            {
                "at": _iso(c.at),
                "ip": c.ip,
                "user_agent": c.user_agent,
                "form": c.form,
                "name": c.name,
                "confirmed_at": _iso(c.confirmed_at),
            }
            for c in consent_history(engine, subscriber_id)
        ],
        "deliveries": [{"issue": s.issue, "state": s.state, "settled_at": _iso(s.settled_at)} for s in sent],
        "events": [
            {
                "event": e.event,
                "issue": e.issue,
                "reason": e.reason,
                "bounce_type": e.bounce_type,
                "occurred_at": _iso(e.occurred_at),
                "received_at": _iso(e.received_at),
            }
            for e in events
        ],
        "welcome": None if welcome is None else {"state": welcome.state, "sent_at": _iso(welcome.sent_at)},
    }
