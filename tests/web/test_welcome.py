"""The welcome mail: sent once after a confirmed sign-up through the configured backend
(a real SMTP server, aiosmtpd; the outbox), rendered by the issue's pipeline with the
latest issue's headline and link, recorded and counted; a refused send leaves the
subscription confirmed and is retried later; ``welcome.enabled: false`` sends none."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import logging
import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import lxml.html
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from newsletter import issuefile, render, welcome
from newsletter.config import Settings
from newsletter.senders import sender_for
from newsletter.store import subscribers
from newsletter.web.app import create_app
from tests.conftest import forged_placeholder_issue
from tests.senders.conftest import SmtpServer, start_smtp_server

from .conftest import BASE_URL, SECRET, Clock, csrf_token
from .test_archive import mark_sent

SLUG = "2024-10-25"
SMTP_OPTIONS = {"host": "127.0.0.1", "security": "none", "username_env": None, "password_env": None}


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = start_smtp_server()
    yield server
    server.stop()


@pytest.fixture
def config_overrides(smtp: SmtpServer) -> dict[str, Any]:
    return {"delivery": {"backend": "smtp", "smtp": SMTP_OPTIONS | {"port": smtp.port}}}


@pytest.fixture
def smtp_client(web_settings: Settings, engine: Engine, clock: Clock) -> Iterator[TestClient]:
    """The app with the configured sender: SMTP to aiosmtpd."""
    app = create_app(web_settings, engine=engine, clock=clock, secret=SECRET)
    with TestClient(app, base_url=BASE_URL) as client:
        yield client


def received(smtp: SmtpServer) -> list[EmailMessage]:
    found = []
    for envelope in smtp.handler.messages:
        message = email.message_from_bytes(envelope.original_content or b"", policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        found.append(message)
    return found


def text_of(message: EmailMessage) -> str:
    return message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def html_of(message: EmailMessage) -> str:
    return message.get_body(("html",)).get_content()  # type: ignore[union-attr]


def sign_up_and_confirm(client: TestClient, smtp: SmtpServer, address: str) -> Any:
    response = client.post("/subscribe", data={"email": address, "csrf_token": csrf_token(client)})
    assert response.status_code == 200
    confirmation = [m for m in received(smtp) if m["X-Newsletter-Kind"] == "confirmation"][-1]
    link = re.search(r"http://127\.0\.0\.1:8000(/confirm/[A-Za-z0-9_-]+)", text_of(confirmation))
    assert link
    return client.post(link.group(1), data={"csrf_token": csrf_token(client, link.group(1))})


def welcomes(smtp: SmtpServer) -> list[EmailMessage]:
    return [m for m in received(smtp) if m["X-Newsletter-Kind"] == "welcome"]


def test_a_confirmed_reader_gets_one_welcome_over_smtp(
    smtp_client: TestClient, smtp: SmtpServer, web_settings: Settings, engine: Engine, clock: Clock
) -> None:
    mark_sent(web_settings)
    issue = issuefile.load(issuefile.path_for(web_settings.issues_dir, SLUG))
    assert issue.roundup is not None
    confirmed = sign_up_and_confirm(smtp_client, smtp, "new.reader@example.org")
    assert confirmed.status_code == 200 and "You are subscribed" in confirmed.text
    [mail] = welcomes(smtp)
    reader = subscribers.get(engine, "new.reader@example.org")
    assert reader is not None and reader.status == "active"
    assert mail["Subject"] == f"Welcome to {web_settings.publication.name}" and mail["To"] == "new.reader@example.org"
    assert mail["List-Unsubscribe"] == f"<{BASE_URL}/unsubscribe/{reader.token}>"
    text, html = text_of(mail), html_of(mail)
    web_version = f"{BASE_URL}/archive/{SLUG}"
    assert issue.roundup.title in " ".join(text.split()) and f"Read it: {web_version}" in text
    doc = lxml.html.document_fromstring(html)
    hrefs = {a.get("href"): " ".join(a.text_content().split()) for a in doc.iter("a")}
    assert hrefs[web_version] in (issue.roundup.title, "Read the latest issue")
    assert hrefs[f"{BASE_URL}/preferences/{reader.token}"] in ("Preferences", "your preferences page")
    assert hrefs[f"{BASE_URL}/unsubscribe/{reader.token}"] == "Unsubscribe"
    assert web_settings.publication.postal_address in " ".join(doc.text_content().split())
    assert "%%" not in html + text
    assert welcome.state_of(engine, reader.id) == "sent"
    assert welcome.count_sent(engine, clock.now - dt.timedelta(minutes=1), clock.now + dt.timedelta(minutes=1)) == 1
    assert welcome.count_sent(engine, clock.now + dt.timedelta(minutes=1), clock.now + dt.timedelta(days=1)) == 0

    # a re-confirmation (they unsubscribed, then signed up again) sends no second welcome
    subscribers.unsubscribe(engine, "new.reader@example.org")
    clock.advance(hours=2)
    assert sign_up_and_confirm(smtp_client, smtp, "new.reader@example.org").status_code == 200
    assert subscribers.get(engine, "new.reader@example.org").status == "active"  # type: ignore[union-attr]
    assert len(welcomes(smtp)) == 1
    # and calling it again directly sends nothing either
    with sender_for(web_settings) as sender:
        assert not welcome.send_welcome(engine, web_settings, sender, reader.id, now=clock.now)
    assert len(welcomes(smtp)) == 1

    # erasure forgets who was welcomed, not that a welcome was sent
    subscribers.remove(engine, "new.reader@example.org")
    assert welcome.state_of(engine, reader.id) is None
    assert welcome.count_sent(engine, clock.now - dt.timedelta(days=1), clock.now + dt.timedelta(days=1)) == 1


def test_a_refused_welcome_keeps_the_subscription_and_is_retried(
    smtp_client: TestClient,
    smtp: SmtpServer,
    web_settings: Settings,
    engine: Engine,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    address = "refused@example.org"
    smtp_client.post("/subscribe", data={"email": address, "csrf_token": csrf_token(smtp_client)})
    [confirmation] = received(smtp)
    link = re.search(r"http://127\.0\.0\.1:8000(/confirm/[A-Za-z0-9_-]+)", text_of(confirmation))
    assert link
    smtp.handler.reject[address] = "550 5.1.1 mailbox unavailable"
    with caplog.at_level(logging.INFO, logger="newsletter.web"):
        done = smtp_client.post(link.group(1), data={"csrf_token": csrf_token(smtp_client, link.group(1))})
    assert done.status_code == 200 and "You are subscribed" in done.text
    reader = subscribers.get(engine, address)
    assert reader is not None and reader.status == "active"
    assert welcome.state_of(engine, reader.id) == "failed" and welcomes(smtp) == []
    logged = [r.getMessage() for r in caplog.records if "welcome" in r.getMessage()]
    assert logged == [f"event=welcome_failed subscriber={reader.id} error=DeliveryError"]
    assert reader.token not in caplog.text

    del smtp.handler.reject[address]
    with sender_for(web_settings) as sender:
        done_again = welcome.retry_failed(engine, web_settings, sender, now=clock.now)
        assert (done_again.sent, done_again.failed) == (1, 0)
        assert welcome.retry_failed(engine, web_settings, sender, now=clock.now) == welcome.Retried(0, 0)
    [mail] = welcomes(smtp)
    assert mail["To"] == address and welcome.state_of(engine, reader.id) == "sent"
    # no issue sent yet: the welcome points at the archive instead
    assert f"Read it: {BASE_URL}/archive\n" not in text_of(mail) and f"Past issues: {BASE_URL}/archive" in text_of(mail)


def test_retries_stop_after_the_configured_attempts(
    smtp_client: TestClient, smtp: SmtpServer, web_settings: Settings, engine: Engine, clock: Clock
) -> None:
    reader = subscribers.add(engine, "gone@example.org")
    smtp.handler.reject["gone@example.org"] = "550 5.1.1 no such user"
    with sender_for(web_settings) as sender:
        with pytest.raises(Exception, match="welcome email to subscriber .* not sent"):
            welcome.send_welcome(engine, web_settings, sender, reader.id, now=clock.now)
        for _ in range(web_settings.welcome.max_attempts + 2):
            welcome.retry_failed(engine, web_settings, sender, now=clock.now)
    attempts = len([a for a in smtp.handler.messages if "gone@example.org" in a.rcpt_tos])
    assert attempts == 0 and welcome.state_of(engine, reader.id) == "failed"
    assert smtp.handler.mails == web_settings.welcome.max_attempts  # one MAIL per attempt, then no more


def test_welcome_disabled_sends_none(
    write_config: Any, database_url: str, engine: Engine, clock: Clock, smtp: SmtpServer
) -> None:
    from newsletter.config import load_settings

    settings = load_settings(
        write_config(
            {
                "database": {"url": database_url},
                "welcome": {"enabled": False},
                "delivery": {"backend": "smtp", "smtp": SMTP_OPTIONS | {"port": smtp.port}},
            }
        ),
        env={},
    )
    app = create_app(settings, engine=engine, clock=clock, secret=SECRET)
    with TestClient(app, base_url=BASE_URL) as client:
        assert sign_up_and_confirm(client, smtp, "quiet@example.org").status_code == 200
    assert welcomes(smtp) == [] and len(received(smtp)) == 1  # the confirmation only
    reader = subscribers.get(engine, "quiet@example.org")
    assert reader is not None and reader.status == "active" and welcome.state_of(engine, reader.id) is None


def test_the_outbox_gets_the_welcome(write_config: Any, database_url: str, engine: Engine, clock: Clock) -> None:
    from newsletter.config import load_settings

    settings = load_settings(write_config({"database": {"url": database_url}}), env={})
    app = create_app(settings, engine=engine, clock=clock, secret=SECRET)
    with TestClient(app, base_url=BASE_URL) as client:
        client.post("/subscribe", data={"email": "boxed@example.org", "csrf_token": csrf_token(client)})
        [eml] = Path(settings.delivery.outbox.dir).glob("confirmation/*.eml")
        text = text_of(email.message_from_bytes(eml.read_bytes(), policy=email.policy.default))  # type: ignore[arg-type]
        link = re.search(r"http://127\.0\.0\.1:8000(/confirm/\S+)", text)
        assert link
        client.post(link.group(1), data={"csrf_token": csrf_token(client, link.group(1))})
    [welcomed] = Path(settings.delivery.outbox.dir).glob("welcome/*boxed@example.org.eml")
    message = email.message_from_bytes(welcomed.read_bytes(), policy=email.policy.default)
    assert message["Subject"] == f"Welcome to {settings.publication.name}"


def test_the_welcome_passes_the_issue_checks_and_keeps_content_placeholders_literal(settings: Settings) -> None:
    forged = forged_placeholder_issue()
    assert forged.roundup is not None
    forged = forged.model_copy(update={"roundup": forged.roundup.model_copy(update={"title": "For %%email%% only"})})
    for latest in (forged, None):
        built = welcome.build_welcome(settings, latest, dt.date(2024, 10, 28))
        assert built.errors == [] and built.warnings == []
        html, text = render.personalize_parts(built.email, render.sample_recipient(settings))
        assert "reader@example.com" in text and text.count("reader@example.com") == 1
        if latest is not None:
            assert "For %%email%% only" in text and "For %%email%% only" in html


def test_the_daily_job_retries_failed_welcomes(
    smtp: SmtpServer, web_settings: Settings, engine: Engine, clock: Clock
) -> None:
    from newsletter import schedule

    reader = subscribers.add(engine, "later@example.org")
    smtp.handler.reject["later@example.org"] = "451 4.3.0 try later"
    with sender_for(web_settings) as sender, pytest.raises(Exception, match="not sent"):
        welcome.send_welcome(engine, web_settings, sender, reader.id, now=dt.datetime.now(dt.UTC))
    assert welcome.state_of(engine, reader.id) == "failed"
    del smtp.handler.reject["later@example.org"]
    schedule.scheduled_expire(str(web_settings.config_path))
    assert welcome.state_of(engine, reader.id) == "sent" and len(welcomes(smtp)) == 1


def test_the_cli_retries_and_exits_non_zero_when_one_fails_again(
    smtp: SmtpServer, web_settings: Settings, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    from newsletter import cli

    reader = subscribers.add(engine, "cli@example.org")
    smtp.handler.reject["cli@example.org"] = "451 4.3.0 try later"
    with sender_for(web_settings) as sender, pytest.raises(Exception, match="not sent"):
        welcome.send_welcome(engine, web_settings, sender, reader.id, now=dt.datetime.now(dt.UTC))
    capsys.readouterr()
    args = ["--config", str(web_settings.config_path), "welcome", "retry"]
    assert cli.main(args) == 1
    assert "welcome mails: 0 sent, 1 failed again" in capsys.readouterr().out
    del smtp.handler.reject["cli@example.org"]
    assert cli.main(args) == 0
    assert "welcome mails: 1 sent, 0 failed again" in capsys.readouterr().out
    assert welcome.state_of(engine, reader.id) == "sent"
