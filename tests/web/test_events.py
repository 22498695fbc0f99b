"""store.events, the core the webhook calls: each event applied once, statuses only move
up (complained > bounced > unsubscribed), unknown addresses still counted."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, select

from newsletter.store import events, subscribers
from newsletter.store.tables import webhook_events

NOW = dt.datetime(2024, 10, 28, 9, 0, tzinfo=dt.UTC)


def test_each_event_is_applied_once(engine: Engine) -> None:
    subscribers.add(engine, "a@example.net", status="active")
    batch = [{"sg_event_id": "1", "event": "unsubscribe", "email": "A@Example.net", "timestamp": 1730000000}]
    first = events.apply_events(engine, batch, now=NOW)
    second = events.apply_events(engine, batch, now=NOW)
    assert (first.recorded, first.duplicates, first.status_changes) == (1, 0, {"unsubscribed": 1})
    assert (second.recorded, second.duplicates, second.status_changes) == (0, 1, {})
    with engine.connect() as conn:
        row = conn.execute(select(webhook_events)).one()
    assert row.occurred_at == dt.datetime.fromtimestamp(1730000000, dt.UTC)
    assert row.subscriber_id == subscribers.get(engine, "a@example.net").id


def test_statuses_only_move_up(engine: Engine) -> None:
    subscribers.add(engine, "a@example.net", status="active")
    events.apply_events(engine, [{"sg_event_id": "1", "event": "spamreport", "email": "a@example.net"}], now=NOW)
    applied = events.apply_events(
        engine,
        [
            {"sg_event_id": "2", "event": "bounce", "type": "bounce", "email": "a@example.net"},
            {"sg_event_id": "3", "event": "unsubscribe", "email": "a@example.net"},
            {"sg_event_id": "4", "event": "group_resubscribe", "email": "a@example.net"},
        ],
        now=NOW,
    )
    assert applied.recorded == 3 and applied.status_changes == {}
    assert subscribers.get(engine, "a@example.net").status == "complained"


def test_a_bounce_clears_a_pending_confirmation(engine: Engine) -> None:
    signed = subscribers.sign_up(engine, "p@example.net", consent=subscribers.Consent(at=NOW), now=NOW)
    events.apply_events(engine, [{"sg_event_id": "1", "event": "bounce", "email": "p@example.net"}], now=NOW)
    assert subscribers.get(engine, "p@example.net").status == "bounced"
    assert signed.confirmation_token is not None
    try:
        subscribers.confirm(engine, signed.confirmation_token, now=NOW)
    except Exception as exc:  # the bounce spent the link
        assert "not valid" in str(exc)
    else:
        raise AssertionError("a bounced address confirmed")


def test_unknown_addresses_and_custom_args(engine: Engine) -> None:
    applied = events.apply_events(
        engine,
        [
            {
                "sg_event_id": "1",
                "event": "open",
                "email": "nobody@example.net",
                "issue": "2024-10-25",
                "batch_id": "b9",
            },
            {"sg_event_id": "2", "event": "delivered", "email": "not an address", "newsletter_issue": "2024-10-25"},
            {"sg_event_id": "3", "event": "click", "email": None, "timestamp": "yesterday"},
        ],
        now=NOW,
    )
    assert applied.recorded == 3
    with engine.connect() as conn:
        rows = conn.execute(select(webhook_events).order_by(webhook_events.c.sg_event_id)).all()
    assert [(r.issue, r.batch_id, r.subscriber_id, r.occurred_at) for r in rows] == [
        ("2024-10-25", "b9", None, None),
        ("2024-10-25", None, None, None),
        (None, None, None, None),
    ]
    assert events.issue_stats(engine, "2024-10-25").events == {"open": 1, "delivered": 1}
