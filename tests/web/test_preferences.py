"""The preferences page behind each reader's token: every action a POST with CSRF,
rate-limited, logged without the token; pause 1-8 weeks (and the freeze skips a paused
reader until the pause ends), rename, unsubscribe, export everything stored about them,
erase (suppressed afterwards); bad tokens, missing or forged CSRF, pauses out of range."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from newsletter.errors import SubscriberError
from newsletter.store import events, ledger, preferences, subscribers
from newsletter.store.audience import count_active, iter_active

from .conftest import BASE_URL, Clock, csrf_token

ACTIONS = ("name", "pause", "resume", "unsubscribe", "export", "erase")


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"web": {"preferences_rate_per_hour": 12}}


def page_of(subscriber: subscribers.Subscriber) -> str:
    return f"/preferences/{subscriber.token}"


def post(client: TestClient, subscriber: subscribers.Subscriber, action: str, **form: str) -> Any:
    url = page_of(subscriber)
    return client.post(f"{url}/{action}", data={"csrf_token": csrf_token(client, url), **form})


def test_the_page_shows_the_reader_and_forms_with_csrf(client: TestClient, subscriber: subscribers.Subscriber) -> None:
    response = client.get(page_of(subscriber))
    assert response.status_code == 200
    assert "r***@example.net" in response.text and "reader@example.net" not in response.text
    assert response.headers["cache-control"] == "no-store"
    forms = re.findall(r'<form method="post" action="([^"]+)"', response.text)
    assert forms == [f"{page_of(subscriber)}/{a}" for a in ("name", "pause", "unsubscribe", "export", "erase")]
    assert response.text.count('name="csrf_token"') == len(forms)
    assert [int(n) for n in re.findall(r'<option value="(\d+)"', response.text)] == list(range(1, 9))


def test_rename(client: TestClient, engine: Engine, subscriber: subscribers.Subscriber) -> None:
    done = post(client, subscriber, "name", name="  Ann B. Reader ")
    assert done.status_code == 200 and "Your name is saved." in done.text
    assert subscribers.get(engine, subscriber.email).name == "Ann B. Reader"  # type: ignore[union-attr]
    refused = post(client, subscriber, "name", name="x" * 201)
    assert refused.status_code == 400 and "not changed" in refused.text
    assert subscribers.get(engine, subscriber.email).name == "Ann B. Reader"  # type: ignore[union-attr]


def test_a_pause_keeps_the_reader_out_of_freezes_until_it_ends(
    client: TestClient, engine: Engine, subscriber: subscribers.Subscriber, clock: Clock
) -> None:
    other = subscribers.add(engine, "other@example.net")
    done = post(client, subscriber, "pause", weeks="3")
    assert done.status_code == 200 and "Delivery is paused until November 18, 2024." in done.text
    assert "Resume delivery now" in done.text
    until = preferences.paused_until(engine, subscriber.id)
    assert until == clock.now + dt.timedelta(weeks=3)
    # an issue frozen during the pause skips them; the stream and count agree
    send, _ = ledger.start_send(engine, "2024-11-01", "Issue", now=clock.now + dt.timedelta(days=4))
    assert send.audience == 1
    assert count_active(engine, clock.now) == 1
    assert [m.id for b in iter_active(engine, now=clock.now) for m in b] == [other.id]
    # the first freeze after it ends includes them again
    later, _ = ledger.start_send(engine, "2024-11-22", "Issue", now=clock.now + dt.timedelta(weeks=3))
    assert later.audience == 2
    assert count_active(engine, clock.now + dt.timedelta(weeks=3, seconds=1)) == 2


def test_resume_ends_a_pause_now(client: TestClient, engine: Engine, subscriber: subscribers.Subscriber) -> None:
    post(client, subscriber, "pause", weeks="8")
    done = post(client, subscriber, "resume")
    assert done.status_code == 200 and "Delivery is resumed" in done.text and "Pause delivery" in done.text
    assert preferences.paused_until(engine, subscriber.id) is None


@pytest.mark.parametrize("weeks", ["0", "9", "-1", "2.5", "two", "", "100000"])
def test_a_pause_out_of_range_is_refused(
    client: TestClient, engine: Engine, subscriber: subscribers.Subscriber, weeks: str
) -> None:
    response = post(client, subscriber, "pause", weeks=weeks)
    assert response.status_code == 400
    assert preferences.paused_until(engine, subscriber.id) is None


def test_the_store_refuses_bad_pauses(engine: Engine, subscriber: subscribers.Subscriber) -> None:
    with pytest.raises(SubscriberError, match="1 to 8 weeks"):
        preferences.pause(engine, subscriber.token, 9)
    subscribers.unsubscribe(engine, subscriber.email)
    with pytest.raises(SubscriberError, match="unsubscribed"):
        preferences.pause(engine, subscriber.token, 2)
    with pytest.raises(SubscriberError, match="not valid"):
        preferences.pause(engine, "no-such-token-" + "x" * 20, 2)


def test_unsubscribe_from_the_page(client: TestClient, engine: Engine, subscriber: subscribers.Subscriber) -> None:
    done = post(client, subscriber, "unsubscribe")
    assert done.status_code == 200 and "You are unsubscribed." in done.text and "not subscribed" in done.text
    assert subscribers.get(engine, subscriber.email).status == "unsubscribed"  # type: ignore[union-attr]
    assert "Pause delivery" not in done.text and "Download my data" in done.text


def test_export_holds_everything_stored_about_the_reader(
    client: TestClient, engine: Engine, subscriber: subscribers.Subscriber, clock: Clock
) -> None:
    other = subscribers.add(engine, "other@example.net")
    ledger.start_send(engine, "2024-10-25", "Issue", now=clock.now)
    events.apply_events(
        engine,
        [
            {"sg_event_id": "ev-1", "event": "delivered", "email": subscriber.email, "newsletter_issue": "2024-10-25"},
            {"sg_event_id": "ev-2", "event": "open", "email": subscriber.email, "newsletter_issue": "2024-10-25"},
            {"sg_event_id": "ev-3", "event": "delivered", "email": other.email, "newsletter_issue": "2024-10-25"},
        ],
        now=clock.now,
        anonymous=frozenset(),  # tracking per_subscriber: the open names its reader
    )
    events.apply_events(  # tracking aggregate (the default): an open names nobody
        engine,
        [{"sg_event_id": "ev-4", "event": "open", "email": subscriber.email, "newsletter_issue": "2024-10-25"}],
        now=clock.now,
    )
    response = post(client, subscriber, "export")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["content-disposition"].startswith("attachment;")
    assert response.headers["cache-control"] == "no-store"
    data = json.loads(response.text)
    assert data["subscriber"]["email"] == subscriber.email and data["subscriber"]["name"] == "Ann Reader"
    assert "token" not in data["subscriber"] and subscriber.token not in response.text
    assert [d["issue"] for d in data["deliveries"]] == ["2024-10-25"]
    assert sorted(e["event"] for e in data["events"]) == ["delivered", "open"]  # theirs only, ev-4 is nobody's
    assert "other@example.net" not in response.text
    assert data["consents"] == [] and data["welcome"] is None


def test_export_includes_the_consent_history(client: TestClient, engine: Engine, clock: Clock) -> None:
    signed = subscribers.sign_up(
        engine,
        "web@example.net",
        consent=subscribers.Consent(at=clock.now, ip="198.51.100.4", user_agent="Firefox", form="web:/subscribe"),
        now=clock.now,
    )
    assert signed.subscriber is not None
    data = json.loads(post(client, signed.subscriber, "export").text)
    assert data["consents"][0]["ip"] == "198.51.100.4" and data["consents"][0]["form"] == "web:/subscribe"


def test_erase_needs_the_box_and_then_suppresses(
    client: TestClient, engine: Engine, subscriber: subscribers.Subscriber
) -> None:
    unticked = post(client, subscriber, "erase")
    assert unticked.status_code == 400 and subscribers.get(engine, subscriber.email) is not None
    done = post(client, subscriber, "erase", confirm="yes")
    assert done.status_code == 200 and "You are erased" in done.text
    assert subscribers.get(engine, subscriber.email) is None
    assert subscribers.is_suppressed(engine, subscriber.email)
    with pytest.raises(SubscriberError, match="suppressed"):
        subscribers.add(engine, subscriber.email)  # an import cannot bring them back
    assert client.get(page_of(subscriber)).status_code == 404


@pytest.mark.parametrize("action", ACTIONS)
def test_actions_need_the_csrf_token(
    client: TestClient, engine: Engine, subscriber: subscribers.Subscriber, action: str
) -> None:
    url = f"{page_of(subscriber)}/{action}"
    form = {"weeks": "2", "name": "Mallory", "confirm": "yes"}
    token = csrf_token(client, page_of(subscriber))
    assert client.post(url, data=form).status_code == 403  # missing
    assert client.post(url, data={**form, "csrf_token": token[:-2] + "xx"}).status_code == 403  # forged
    issued, _, mac = token.partition(".")
    assert client.post(url, data={**form, "csrf_token": f"{int(issued) + 60}.{mac}"}).status_code == 403
    with TestClient(client.app, base_url=BASE_URL) as stranger:  # someone else's cookie, our form token
        stranger.get(page_of(subscriber))
        assert stranger.post(url, data={**form, "csrf_token": token}).status_code == 403
    after = subscribers.get(engine, subscriber.email)
    assert after is not None and after.name == "Ann Reader" and after.status == "active"
    assert preferences.paused_until(engine, subscriber.id) is None


@pytest.mark.parametrize("token", ["x" * 56, "short", "a" * 300, "..%2F..%2Fconfig", "%00" * 20])
def test_bad_tokens_are_404_everywhere(client: TestClient, token: str) -> None:
    form = {"csrf_token": csrf_token(client), "weeks": "2", "confirm": "yes"}
    assert client.get(f"/preferences/{token}").status_code == 404
    for action in ACTIONS:
        assert client.post(f"/preferences/{token}/{action}", data=form).status_code == 404


def test_actions_are_rate_limited_per_client(
    app: FastAPI, client: TestClient, subscriber: subscribers.Subscriber, clock: Clock
) -> None:
    for n in range(12):
        assert post(client, subscriber, "name", name=f"Ann {n}").status_code == 200
    refused = post(client, subscriber, "name", name="Ann 13")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    with TestClient(app, base_url=BASE_URL, client=("192.0.2.9", 40000)) as elsewhere:
        assert post(elsewhere, subscriber, "name", name="Elsewhere").status_code == 200
    clock.advance(hours=1, seconds=1)
    assert post(client, subscriber, "name", name="Later").status_code == 200


def test_actions_are_logged_without_the_token(
    client: TestClient, subscriber: subscribers.Subscriber, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        post(client, subscriber, "name", name="Ann")
        post(client, subscriber, "pause", weeks="2")
        post(client, subscriber, "export")
        post(client, subscriber, "erase", confirm="yes")
    actions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=preferences")]
    assert actions == [
        f"event=preferences action=name subscriber={subscriber.id}",
        f"event=preferences action=pause weeks=2 subscriber={subscriber.id}",
        f"event=preferences action=export subscriber={subscriber.id}",
        f"event=preferences action=erase subscriber={subscriber.id}",
    ]
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("newsletter"))  # not httpx's
    assert "route=/preferences/{token}/erase" in ours
    assert subscriber.token not in ours and subscriber.email not in ours
