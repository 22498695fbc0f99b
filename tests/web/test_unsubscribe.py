"""One-click unsubscribe (RFC 8058): the page behind the link, the POST mail clients send,
idempotence, and tokens that are unknown, forged or malformed."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from newsletter.store import subscribers
from newsletter.store.subscribers import Subscriber

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def test_the_page_asks_with_a_button_and_offers_a_way_back(
    client: TestClient, subscriber: Subscriber, engine: Engine
) -> None:
    response = client.get(f"/unsubscribe/{subscriber.token}")
    assert response.status_code == 200
    page = response.text
    assert f'<form method="post" action="/unsubscribe/{subscriber.token}">' in page
    assert 'name="List-Unsubscribe" value="One-Click"' in page
    assert "<button" in page and 'href="/subscribe"' in page
    assert "r***@example.net" in page and "reader@example.net" not in page
    assert subscribers.get_by_token(engine, subscriber.token).status == "active"  # a GET changes nothing
    assert response.headers["referrer-policy"] == "no-referrer"


def test_one_click_post_unsubscribes_without_cookies(
    client: TestClient, subscriber: Subscriber, engine: Engine
) -> None:
    client.cookies.clear()
    response = client.post(f"/unsubscribe/{subscriber.token}", data=ONE_CLICK)
    assert response.status_code == 200
    assert "You are unsubscribed" in response.text
    found = subscribers.get_by_token(engine, subscriber.token)
    assert found is not None and found.status == "unsubscribed" and found.unsubscribed_at is not None


def test_one_click_post_as_multipart(client: TestClient, subscriber: Subscriber, engine: Engine) -> None:
    response = client.post(f"/unsubscribe/{subscriber.token}", files={"List-Unsubscribe": (None, "One-Click")})
    assert response.status_code == 200
    assert subscribers.get_by_token(engine, subscriber.token).status == "unsubscribed"


def test_the_raw_rfc_8058_body(client: TestClient, subscriber: Subscriber, engine: Engine) -> None:
    response = client.post(
        f"/unsubscribe/{subscriber.token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert subscribers.get_by_token(engine, subscriber.token).status == "unsubscribed"


def test_unsubscribing_twice_is_fine_and_changes_nothing(
    client: TestClient, subscriber: Subscriber, engine: Engine
) -> None:
    assert client.post(f"/unsubscribe/{subscriber.token}", data=ONE_CLICK).status_code == 200
    first = subscribers.get_by_token(engine, subscriber.token)
    assert client.post(f"/unsubscribe/{subscriber.token}", data=ONE_CLICK).status_code == 200
    again = subscribers.get_by_token(engine, subscriber.token)
    assert again == first
    page = client.get(f"/unsubscribe/{subscriber.token}")
    assert page.status_code == 200 and "You are not subscribed" in page.text and "<button" not in page.text


def test_unknown_and_forged_tokens_get_the_same_404(client: TestClient, subscriber: Subscriber, engine: Engine) -> None:
    forged = subscriber.token[:-4] + ("AAAA" if not subscriber.token.endswith("AAAA") else "BBBB")
    answers = []
    for token in (forged, "x" * 40, "short", "has.dots.and~tilde" * 3, "a" * 500):
        for response in (client.get(f"/unsubscribe/{token}"), client.post(f"/unsubscribe/{token}", data=ONE_CLICK)):
            assert response.status_code == 404, token
            assert token not in response.text
            answers.append(response.text)
    assert len(set(answers)) == 1  # nothing tells a forged token from a malformed one
    assert subscribers.get_by_token(engine, subscriber.token).status == "active"


def test_post_without_the_one_click_body_is_refused(client: TestClient, subscriber: Subscriber, engine: Engine) -> None:
    url = f"/unsubscribe/{subscriber.token}"
    for response in (
        client.post(url),
        client.post(url, data={"List-Unsubscribe": "yes"}),
        client.post(url, data={"other": "One-Click"}),
        client.post(url, content=b"\xff\xfe=\x00", headers={"Content-Type": "application/x-www-form-urlencoded"}),
        client.post(
            url, content=b"--broken\r\nnot multipart", headers={"Content-Type": "multipart/form-data; boundary=x"}
        ),
        client.post(url, content=b"{}", headers={"Content-Type": "application/json"}),
    ):
        assert 400 <= response.status_code < 500, response.text
    assert subscribers.get_by_token(engine, subscriber.token).status == "active"


def test_oversized_body_is_413_and_changes_nothing(client: TestClient, subscriber: Subscriber, engine: Engine) -> None:
    response = client.post(
        f"/unsubscribe/{subscriber.token}", data={"List-Unsubscribe": "One-Click", "padding": "x" * 20_000}
    )
    assert response.status_code == 413
    assert subscribers.get_by_token(engine, subscriber.token).status == "active"


def test_a_bounced_subscriber_stays_bounced(client: TestClient, subscriber: Subscriber, engine: Engine) -> None:
    subscribers.mark_status(engine, subscriber.id, "bounced")
    assert client.post(f"/unsubscribe/{subscriber.token}", data=ONE_CLICK).status_code == 200
    assert subscribers.get_by_token(engine, subscriber.token).status == "bounced"
