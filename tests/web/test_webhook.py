"""The SendGrid Signed Event Webhook: real ECDSA P-256 signatures, the replay window,
bodies that are not arrays of events, and events applied once each."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from newsletter.config import Settings
from newsletter.senders.memory import MemorySender
from newsletter.store import batches, events, ledger, subscribers
from newsletter.store.subscribers import Subscriber
from newsletter.store.tables import webhook_events
from newsletter.web.app import create_app

from .conftest import BASE_URL, SECRET, WEBHOOK_KEY_ENV, Clock, event_body, sign

URL = "/webhooks/sendgrid"


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"web": {"sendgrid_webhook": {"max_age_seconds": 300, "max_body_bytes": 50_000}}}


def recorded(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(webhook_events)).scalar_one())


def post(client: TestClient, key: ec.EllipticCurvePrivateKey, clock: Clock, body: bytes) -> Any:
    return client.post(URL, content=body, headers=sign(key, body, int(clock().timestamp())))


def ev(n: str, event: str, address: str = "reader@example.net", **extra: Any) -> dict[str, Any]:
    return {
        "sg_event_id": f"evt-{n}",
        "event": event,
        "email": address,
        "timestamp": 1730000000,
        "newsletter_issue": "2024-10-25",
        "newsletter_batch": "b1",
        **extra,
    }


def status(engine: Engine, address: str) -> str:
    found = subscribers.get(engine, address)
    assert found is not None
    return found.status


def test_events_change_statuses_and_count_for_the_issue(
    client: TestClient, engine: Engine, webhook_key: ec.EllipticCurvePrivateKey, clock: Clock
) -> None:
    for address in (
        "hard@x.net",
        "soft@x.net",
        "dropped@x.net",
        "spam@x.net",
        "unsub@x.net",
        "group@x.net",
        "reader@example.net",
        "quota@x.net",
    ):
        subscribers.add(engine, address, status="active")
    body = event_body(
        ev("1", "bounce", "hard@x.net", type="bounce", reason="550 5.1.1 user unknown"),
        ev("2", "bounce", "soft@x.net", type="blocked", reason="421 try later"),
        ev("3", "dropped", "dropped@x.net", reason="Bounced Address"),
        ev("4", "spamreport", "spam@x.net"),
        ev("5", "unsubscribe", "unsub@x.net"),
        ev("6", "group_unsubscribe", "group@x.net", asm_group_id=1),
        ev("7", "delivered", response="250 OK"),
        ev("8", "open"),
        ev("9", "open"),
        ev("10", "click", url="https://news.example.org/a"),
        ev("11", "dropped", "quota@x.net", reason="Recipient List over Package Quota"),
    )
    response = post(client, webhook_key, clock, body)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 11, "recorded": 11, "duplicates": 0, "ignored": 0, "reconciled": 0}
    assert [
        status(engine, a)
        for a in (
            "hard@x.net",
            "soft@x.net",
            "dropped@x.net",
            "spam@x.net",
            "unsub@x.net",
            "group@x.net",
            "reader@example.net",
            "quota@x.net",
        )
    ] == ["bounced", "active", "bounced", "complained", "unsubscribed", "unsubscribed", "active", "active"]
    stats = events.issue_stats(engine, "2024-10-25")
    assert stats.events["delivered"] == 1 and stats.events["open"] == 2 and stats.events["click"] == 1
    # tracking is aggregate (the default): the opens and the click name nobody
    assert stats.unique_opens == 0 and stats.unique_clicks == 0
    with engine.connect() as conn:
        kinds = dict(conn.execute(select(webhook_events.c.sg_event_id, webhook_events.c.bounce_type)).all())
        readers = conn.execute(
            select(webhook_events.c.subscriber_id, webhook_events.c.delivery_id).where(
                webhook_events.c.event.in_(("open", "click"))
            )
        ).all()
    assert readers == [(None, None)] * 3
    assert (kinds["evt-1"], kinds["evt-2"], kinds["evt-7"]) == ("hard", "soft", None)


def test_a_replayed_delivery_changes_nothing(
    client: TestClient, engine: Engine, subscriber: Subscriber, webhook_key: ec.EllipticCurvePrivateKey, clock: Clock
) -> None:
    body = event_body(ev("1", "bounce", type="bounce"))
    assert post(client, webhook_key, clock, body).status_code == 200
    assert status(engine, "reader@example.net") == "bounced"
    subscribers.mark_status(engine, subscriber.id, "active")  # an editor re-activated them
    clock.advance(seconds=60)
    again = post(client, webhook_key, clock, body)  # SendGrid retries, freshly signed
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert status(engine, "reader@example.net") == "active"
    assert recorded(engine) == 1


def test_unsigned_badly_signed_and_stale_requests_are_403(
    client: TestClient, engine: Engine, subscriber: Subscriber, webhook_key: ec.EllipticCurvePrivateKey, clock: Clock
) -> None:
    body = event_body(ev("1", "spamreport"))
    now = int(clock().timestamp())
    stranger = ec.generate_private_key(ec.SECP256R1())
    good = sign(webhook_key, body, now)
    cases = {
        "no headers": {"Content-Type": "application/json"},
        "no timestamp": {k: v for k, v in good.items() if "Timestamp" not in k},
        "no signature": {k: v for k, v in good.items() if "Signature" not in k},
        "another key": sign(stranger, body, now),
        "stale": sign(webhook_key, body, now - 301),
        "from the future": sign(webhook_key, body, now + 301),
        "timestamp swapped": {**good, "X-Twilio-Email-Event-Webhook-Timestamp": str(now - 1)},
        "not base64": {**good, "X-Twilio-Email-Event-Webhook-Signature": "%%%not base64%%%"},
        "not a signature": {**good, "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(b"junk").decode()},
        "not a number": {**good, "X-Twilio-Email-Event-Webhook-Timestamp": "yesterday"},
    }
    for name, headers in cases.items():
        response = client.post(URL, content=body, headers=headers)
        assert response.status_code == 403, name
        assert response.json()["status"] == 403
    tampered = body.replace(b"spamreport", b"delivered")
    assert client.post(URL, content=tampered, headers=good).status_code == 403
    assert recorded(engine) == 0 and status(engine, "reader@example.net") == "active"


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"event": "bounce"}', b"[1, 2]", b'["a"]', b"null", b'[{"event": "bounce"}, 3]', b"\xff\xfe", b""],
)
def test_bodies_that_are_not_arrays_of_events_are_400(
    client: TestClient, engine: Engine, webhook_key: ec.EllipticCurvePrivateKey, clock: Clock, body: bytes
) -> None:
    response = post(client, webhook_key, clock, body)
    assert response.status_code == 400
    assert recorded(engine) == 0


def test_events_that_cannot_be_kept_are_ignored(
    client: TestClient, engine: Engine, subscriber: Subscriber, webhook_key: ec.EllipticCurvePrivateKey, clock: Clock
) -> None:
    body = event_body(
        {"event": "bounce", "email": "reader@example.net"},  # no sg_event_id
        {"sg_event_id": "e1", "event": "made_up"},
        {"sg_event_id": 5, "event": "bounce"},
        {"sg_event_id": "x" * 101, "event": "open"},
    )
    response = post(client, webhook_key, clock, body)
    assert response.status_code == 200 and response.json()["ignored"] == 4
    assert recorded(engine) == 0 and status(engine, "reader@example.net") == "active"


def test_oversized_body_is_413(
    client: TestClient, engine: Engine, webhook_key: ec.EllipticCurvePrivateKey, clock: Clock
) -> None:
    body = event_body(*[ev(str(n), "open", reason="x" * 500) for n in range(100)])
    assert len(body) > 50_000
    assert post(client, webhook_key, clock, body).status_code == 413
    assert recorded(engine) == 0


def test_without_a_key_the_webhook_is_unavailable(
    web_settings: Settings,
    engine: Engine,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    webhook_key: ec.EllipticCurvePrivateKey,
) -> None:
    monkeypatch.delenv(WEBHOOK_KEY_ENV)
    app = create_app(web_settings, engine=engine, sender=MemorySender(), clock=clock, secret=SECRET)
    with TestClient(app, base_url=BASE_URL) as client:
        body = event_body(ev("1", "open"))
        response = client.post(URL, content=body, headers=sign(webhook_key, body, int(clock().timestamp())))
    assert response.status_code == 503
    assert recorded(engine) == 0


def test_a_malformed_key_stops_the_app_from_starting(
    web_settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from newsletter.errors import ConfigError

    monkeypatch.setenv(WEBHOOK_KEY_ENV, "bm90IGEga2V5")
    with pytest.raises(ConfigError, match="not a base64 DER public key"):
        create_app(web_settings, engine=engine, secret=SECRET)


def test_the_response_and_logs_hold_no_addresses(
    client: TestClient,
    engine: Engine,
    subscriber: Subscriber,
    webhook_key: ec.EllipticCurvePrivateKey,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="newsletter")
    response = post(client, webhook_key, clock, event_body(ev("1", "spamreport")))
    assert response.status_code == 200
    assert "reader@example.net" not in response.text + caplog.text
    assert "event=webhook received=1 recorded=1" in caplog.text
    assert json.loads(response.text)["recorded"] == 1


def _ambiguous_send(engine: Engine, addresses: list[str]) -> tuple[int, list[batches.Claimed]]:
    """A send whose one batch got no answer: its rows are ambiguous."""
    for address in addresses:
        subscribers.add(engine, address, status="active")
    send, _ = ledger.start_send(engine, "2024-10-25", "subject", "hash")
    claimed, _ = batches.claim_batch(engine, send.id, len(addresses), "b-lost", owner="here:1:x", lease_seconds=60)
    lost = dict.fromkeys([c.key for c in claimed], "no answer within 30 s")
    batches.settle(engine, batches.Fence("b-lost", "here:1:x"), batches.Settlement(ambiguous=lost), close=True)
    return send.id, claimed


def test_events_settle_the_ambiguous_rows_they_name(
    client: TestClient, engine: Engine, webhook_key: ec.EllipticCurvePrivateKey, clock: Clock
) -> None:
    send_id, claimed = _ambiguous_send(engine, ["a@x.net", "b@x.net", "c@x.net", "d@x.net"])
    a, b, _c, _d = claimed
    body = event_body(
        ev("r1", "processed", "a@x.net", newsletter_batch="b-lost", newsletter_delivery=str(a.key)),
        ev("r2", "delivered", "a@x.net", newsletter_batch="b-lost", newsletter_delivery=str(a.key)),
        ev("r3", "processed", "b@x.net", newsletter_batch="b-lost", newsletter_delivery=str(b.key)),
        ev(
            "r4",
            "dropped",
            "b@x.net",
            newsletter_batch="b-lost",
            newsletter_delivery=str(b.key),
            reason="Bounced Address",
        ),
        # no delivery id (an older message): matched by batch and subscriber
        ev("r5", "deferred", "c@x.net", newsletter_batch="b-lost"),
        # an open for another batch proves nothing about this one
        ev("r6", "open", "d@x.net", newsletter_batch="b-other"),
    )
    response = post(client, webhook_key, clock, body)
    assert response.status_code == 200 and response.json()["reconciled"] == 3
    states = _states(engine, send_id)
    assert states == {"a@x.net": "sent", "b@x.net": "rejected", "c@x.net": "sent", "d@x.net": "ambiguous"}
    # replayed events change nothing; a late event for the last row settles it
    assert post(client, webhook_key, clock, body).json()["reconciled"] == 0
    late = event_body(
        ev("r7", "delivered", "d@x.net", newsletter_batch="b-lost", newsletter_delivery=str(claimed[3].key))
    )
    assert post(client, webhook_key, clock, late).json()["reconciled"] == 1
    assert ledger.counts(engine, send_id).ambiguous == 0


def test_events_never_touch_rows_that_are_not_ambiguous(
    client: TestClient, engine: Engine, webhook_key: ec.EllipticCurvePrivateKey, clock: Clock
) -> None:
    subscribers.add(engine, "live@x.net", status="active")
    send, _ = ledger.start_send(engine, "2024-10-25", "subject", "hash")
    [row], _ = batches.claim_batch(engine, send.id, 1, "b-live", owner="here:1:x", lease_seconds=60)
    body = event_body(ev("l1", "dropped", "live@x.net", newsletter_batch="b-live", newsletter_delivery=str(row.key)))
    assert post(client, webhook_key, clock, body).json()["reconciled"] == 0
    assert _states(engine, send.id) == {"live@x.net": "in_flight"}  # its owner settles it


def _states(engine: Engine, send_id: int) -> dict[str, str]:
    from newsletter.store.tables import deliveries
    from newsletter.store.tables import subscribers as table

    with engine.connect() as conn:
        rows = conn.execute(
            select(table.c.email, deliveries.c.state)
            .select_from(deliveries.join(table, table.c.id == deliveries.c.subscriber_id))
            .where(deliveries.c.send_id == send_id)
        ).all()
    return dict(rows)
