"""Sign-up with double opt-in: the form, CSRF, the confirmation email through the sender,
the confirmation page (only its button confirms), no enumeration, the rate limits per
client and per address, addresses never mailed, the consent history, bad input."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from newsletter.config import Settings
from newsletter.senders.memory import MemorySender
from newsletter.store import subscribers
from newsletter.web.app import create_app

from .conftest import BASE_URL, SECRET, Clock, csrf_token


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"web": {"subscribe_rate_per_hour": 3}}


def sign_up(client: TestClient, address: str, name: str = "") -> Any:
    return client.post("/subscribe", data={"email": address, "name": name, "csrf_token": csrf_token(client)})


def confirm_link(sender: MemorySender) -> str:
    batch = sender.batches[-1]
    found = re.search(r"(http://127\.0\.0\.1:8000/confirm/[A-Za-z0-9_-]+)", batch.email.text)
    assert found, batch.email.text
    return found.group(1).removeprefix(BASE_URL)


def confirm(client: TestClient, link: str) -> Any:
    """Open the emailed link and press the button, as a reader does."""
    return client.post(link, data={"csrf_token": csrf_token(client, link)})


def test_the_form_sets_a_csrf_cookie(client: TestClient) -> None:
    response = client.get("/subscribe")
    assert response.status_code == 200
    assert 'name="email"' in response.text and 'name="csrf_token"' in response.text
    cookie = response.headers["set-cookie"]
    assert "newsletter_csrf=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie


def test_sign_up_emails_a_link_that_activates(client: TestClient, engine: Engine, sender: MemorySender) -> None:
    response = sign_up(client, "New.Reader@Example.org", "Nia")
    assert response.status_code == 200 and "Check your inbox" in response.text
    pending = subscribers.get(engine, "new.reader@example.org")
    assert pending is not None and pending.status == "pending" and pending.name == "Nia"
    assert pending.consent is not None and pending.consent.form == "web:/subscribe"
    assert len(sender.batches) == 1
    batch = sender.batches[0]
    assert batch.deliveries[0].recipient.email == "New.Reader@Example.org"
    assert batch.email.subject.startswith("Confirm your subscription")
    link = confirm_link(sender)
    assert link in batch.email.html
    page = client.get(link)
    assert page.status_code == 200 and "Confirm my subscription</button>" in page.text
    assert f'action="{link}"' in page.text and "N***@Example.org" in page.text
    assert subscribers.get(engine, "new.reader@example.org").status == "pending"
    confirmed = confirm(client, link)
    assert confirmed.status_code == 200 and "You are subscribed" in confirmed.text
    assert subscribers.get(engine, "new.reader@example.org").status == "active"
    assert client.get(link).status_code == 404  # used once: the link is spent
    assert client.post(link, data={"csrf_token": csrf_token(client)}).status_code == 404


def test_a_link_scanner_confirms_nothing(
    client: TestClient, engine: Engine, sender: MemorySender, app: FastAPI
) -> None:
    """Mail scanners fetch every link in a message, some with HEAD, some twice."""
    sign_up(client, "scanned@example.net")
    link = confirm_link(sender)
    with TestClient(app, base_url=BASE_URL, client=("198.51.100.20", 1)) as scanner:
        for _ in range(3):
            assert scanner.get(link).status_code == 200
        assert scanner.head(link).status_code in (200, 405)
        # a POST without the page's token (a scanner that submits forms blindly) is refused
        assert scanner.post(link).status_code == 403
        assert scanner.post(link, data={"csrf_token": "1.forged"}).status_code == 403
    found = subscribers.get(engine, "scanned@example.net")
    assert found is not None and found.status == "pending" and found.confirmed_at is None
    assert confirm(client, link).status_code == 200  # the reader's own click still works


def test_known_and_new_addresses_get_the_same_answer(client: TestClient, engine: Engine, sender: MemorySender) -> None:
    subscribers.add(engine, "known@example.net", status="active")
    known = sign_up(client, "known@example.net")
    new = sign_up(client, "unknown@example.net")
    assert known.status_code == new.status_code == 200
    assert known.text == new.text
    assert [b.deliveries[0].recipient.email for b in sender.batches] == ["unknown@example.net"]
    assert subscribers.get(engine, "known@example.net").status == "active"


def test_signing_up_again_later_sends_a_new_link_and_spends_the_old(
    client: TestClient, engine: Engine, sender: MemorySender, clock: Clock
) -> None:
    sign_up(client, "twice@example.net")
    first = confirm_link(sender)
    clock.advance(minutes=61)
    sign_up(client, "twice@example.net")
    second = confirm_link(sender)
    assert first != second
    assert client.get(first).status_code == 404
    assert confirm(client, second).status_code == 200


def test_one_confirmation_email_per_address_per_hour(
    app: FastAPI, client: TestClient, engine: Engine, sender: MemorySender, clock: Clock
) -> None:
    """The report: five sign-ups for one address from five client addresses sent five mails."""
    answers = set()
    for n in range(5):
        with TestClient(app, base_url=BASE_URL, client=(f"198.51.100.{n + 1}", 1)) as visitor:
            response = sign_up(visitor, "target@example.net", f"Name {n}")
            assert response.status_code == 200
            answers.add(response.text)
    assert len(answers) == 1  # the visitor cannot tell a limited sign-up from a sent one
    assert [b.deliveries[0].recipient.email for b in sender.batches] == ["target@example.net"]
    link = confirm_link(sender)  # the one sent stays valid
    assert client.get(link).status_code == 200
    clock.advance(minutes=60, seconds=1)
    sign_up(client, "target@example.net")
    assert len(sender.batches) == 2


@pytest.mark.parametrize("status", ["complained", "bounced", "removed"])
def test_addresses_that_must_not_be_mailed_get_the_same_answer_and_no_mail(
    client: TestClient, engine: Engine, sender: MemorySender, status: str
) -> None:
    added = subscribers.add(engine, "no-mail@example.net", name="Ann Reader", status="active")
    if status == "removed":
        subscribers.remove(engine, "no-mail@example.net")
    else:
        subscribers.mark_status(engine, added.id, status)
    before = subscribers.get(engine, "no-mail@example.net")
    answer = sign_up(client, "no-mail@example.net", "Mallory")
    assert answer.status_code == 200 and answer.text == sign_up(client, "fresh@example.net").text
    assert [b.deliveries[0].recipient.email for b in sender.batches] == ["fresh@example.net"]
    assert subscribers.get(engine, "no-mail@example.net") == before  # unchanged, or still erased


def test_a_sign_up_keeps_the_record_and_appends_its_consent(
    app: FastAPI, engine: Engine, sender: MemorySender, clock: Clock
) -> None:
    with TestClient(app, base_url=BASE_URL, client=("192.0.2.1", 1), headers={"User-Agent": "Ann's browser"}) as ann:
        sign_up(ann, "ann@example.net", "Ann Reader")
        confirm(ann, confirm_link(sender))
    subscribers.unsubscribe(engine, "ann@example.net")
    original = subscribers.get(engine, "ann@example.net")
    assert original is not None and original.consent is not None and original.consent.ip == "192.0.2.1"
    clock.advance(hours=2)
    with TestClient(app, base_url=BASE_URL, client=("203.0.113.66", 1), headers={"User-Agent": "other"}) as other:
        sign_up(other, "ann@example.net", "Mallory")
        kept = subscribers.get(engine, "ann@example.net")
        assert kept is not None and (kept.name, kept.consent, kept.status) == (
            "Ann Reader",
            original.consent,
            "unsubscribed",
        )
        history = subscribers.consent_history(engine, original.id)
        assert [(c.ip, c.user_agent, c.name, c.confirmed_at is not None) for c in history] == [
            ("192.0.2.1", "Ann's browser", "Ann Reader", True),
            ("203.0.113.66", "other", "Mallory", False),
        ]
        # following the new link is fresh consent from the mailbox's owner: the name given then applies
        confirm(other, confirm_link(sender))
    back = subscribers.get(engine, "ann@example.net")
    assert back is not None and (back.status, back.name, back.consent) == ("active", "Mallory", original.consent)
    assert all(c.confirmed_at for c in subscribers.consent_history(engine, original.id))


def test_someone_who_unsubscribed_can_come_back(client: TestClient, engine: Engine, sender: MemorySender) -> None:
    subscribers.add(engine, "back@example.net", status="active")
    subscribers.unsubscribe(engine, "back@example.net")
    sign_up(client, "back@example.net")
    assert subscribers.get(engine, "back@example.net").status == "unsubscribed"  # until confirmed
    assert confirm(client, confirm_link(sender)).status_code == 200
    assert subscribers.get(engine, "back@example.net").status == "active"


def test_the_confirmation_link_expires(client: TestClient, engine: Engine, sender: MemorySender, clock: Clock) -> None:
    sign_up(client, "late@example.net")
    clock.advance(days=4)
    response = client.get(confirm_link(sender))
    assert response.status_code == 404 and "expired" in response.text
    assert subscribers.get(engine, "late@example.net").status == "pending"


def test_csrf_is_required(client: TestClient, engine: Engine, sender: MemorySender, clock: Clock) -> None:
    token = csrf_token(client)
    cookie = client.cookies.get("newsletter_csrf")
    no_token = client.post("/subscribe", data={"email": "a@example.net"})
    forged = client.post("/subscribe", data={"email": "a@example.net", "csrf_token": token[:-2] + "xx"})
    client.cookies.clear()
    no_cookie = client.post("/subscribe", data={"email": "a@example.net", "csrf_token": token})
    client.cookies.set("newsletter_csrf", "another-cookie-value-1234567890")
    other_cookie = client.post("/subscribe", data={"email": "a@example.net", "csrf_token": token})
    client.cookies.set("newsletter_csrf", cookie or "")
    clock.advance(hours=13)
    stale = client.post("/subscribe", data={"email": "a@example.net", "csrf_token": token})
    for response in (no_token, forged, no_cookie, other_cookie, stale):
        assert response.status_code == 403
        assert "reload the page" in response.text
    assert subscribers.get(engine, "a@example.net") is None and not sender.batches


def test_tokens_signed_with_another_key_are_refused(
    app: FastAPI, web_settings: Settings, engine: Engine, sender: MemorySender, clock: Clock
) -> None:
    other = create_app(web_settings, engine=engine, sender=sender, clock=clock, secret="z" * 40)
    with TestClient(other, base_url=BASE_URL) as first, TestClient(app, base_url=BASE_URL) as second:
        token = csrf_token(first)
        second.cookies.set("newsletter_csrf", first.cookies.get("newsletter_csrf") or "")
        response = second.post("/subscribe", data={"email": "a@example.net", "csrf_token": token})
    assert response.status_code == 403
    assert SECRET not in response.text


@pytest.mark.parametrize(
    "address",
    [
        "not-an-address",
        "a@b",
        "",
        "x@example.net\r\nBcc: victim@example.org",
        "=cmd|' /C calc'!A0@example.net",
        "a" * 400 + "@example.net",
    ],
)
def test_bad_addresses_are_a_400_and_nothing_happens(
    client: TestClient, engine: Engine, sender: MemorySender, address: str
) -> None:
    response = sign_up(client, address)
    assert 400 <= response.status_code < 500
    assert subscribers.count(engine) == 0 and not sender.batches


def test_malformed_forms(client: TestClient, engine: Engine, sender: MemorySender) -> None:
    token = csrf_token(client)
    for response in (
        client.post("/subscribe", data={"csrf_token": token}),  # no email
        client.post(
            "/subscribe",
            content=b"email=%zz&csrf_token=" + token.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        client.post(
            "/subscribe",
            content=b"--b\r\nContent-Disposition: form-data\r\n\r\nx",
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        ),
        client.post("/subscribe", content=b"[1,2]", headers={"Content-Type": "application/json"}),
        client.post("/subscribe", data={"email": "a@example.net", "name": "line\nbreak", "csrf_token": token}),
    ):
        assert 400 <= response.status_code < 500, response.text
    assert subscribers.count(engine) == 0 and not sender.batches


def test_oversized_form_is_413(client: TestClient, engine: Engine) -> None:
    response = client.post(
        "/subscribe", data={"email": "a@example.net", "name": "x" * 20_000, "csrf_token": csrf_token(client)}
    )
    assert response.status_code == 413
    assert subscribers.count(engine) == 0


def test_sign_ups_are_rate_limited_per_client_address(
    app: FastAPI, client: TestClient, engine: Engine, clock: Clock
) -> None:
    for n in range(3):
        assert sign_up(client, f"r{n}@example.net").status_code == 200
    refused = sign_up(client, "r3@example.net")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert subscribers.get(engine, "r3@example.net") is None
    with TestClient(app, base_url=BASE_URL, client=("192.0.2.7", 40000)) as elsewhere:
        assert sign_up(elsewhere, "r4@example.net").status_code == 200
    clock.advance(hours=1, seconds=1)
    assert sign_up(client, "r5@example.net").status_code == 200


def test_the_configured_outbox_receives_the_confirmation(web_settings: Settings, engine: Engine, clock: Clock) -> None:
    app = create_app(web_settings, engine=engine, clock=clock, secret=SECRET)  # the configured sender
    with TestClient(app, base_url=BASE_URL) as client:
        assert sign_up(client, "outbox@example.net").status_code == 200
        files = list(Path(web_settings.delivery.outbox.dir).glob("confirmation/*.eml"))
        assert len(files) == 1
        message = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
        assert message["To"] == "outbox@example.net"
        assert message["Subject"] == f"Confirm your subscription to {web_settings.publication.name}"
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        link = re.search(r"http://127\.0\.0\.1:8000(/confirm/\S+)", text)
        assert link and web_settings.publication.postal_address in text
        assert confirm(client, link.group(1)).status_code == 200
    assert subscribers.get(engine, "outbox@example.net").status == "active"


def test_unknown_confirmation_tokens_are_404(client: TestClient) -> None:
    form = {"csrf_token": csrf_token(client)}
    for token in ("x" * 43, "bad token", "a" * 300):
        assert client.get(f"/confirm/{token}").status_code == 404
        assert client.post(f"/confirm/{token}", data=form).status_code == 404
