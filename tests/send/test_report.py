"""The issue report and tracking, end to end on SQLite and PostgreSQL: an issue sent to the
local SendGrid stand-in, then signed webhook events (delivered, open, click with URLs,
bounce, spamreport, unsubscribe), and the report's figures checked against what was sent
and posted; sends through the project's own redirect and pixel (aggregate keeps no
subscriber, per_subscriber does), and the redirect refusing what was never sent."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lxml.html
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, select

from newsletter import render, report, tracking
from newsletter.cli import main
from newsletter.config import Settings, load_settings
from newsletter.send import send_issue
from newsletter.senders.memory import MemorySender
from newsletter.store import events
from newsletter.store.tables import tracked_links, webhook_events
from newsletter.web.app import create_app
from tests.senders.conftest import SendgridStub
from tests.web.conftest import BASE_URL, SECRET, WEBHOOK_KEY_ENV, TestClient, event_body, sign

from .conftest import add_subscribers

SLUG = "2024-10-25"
EDITOR_TOKEN = "report-editor-token-" + "r" * 20


@pytest.fixture
def webhook_key(monkeypatch: pytest.MonkeyPatch) -> ec.EllipticCurvePrivateKey:
    import base64

    from cryptography.hazmat.primitives import serialization

    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    monkeypatch.setenv(WEBHOOK_KEY_ENV, base64.b64encode(der).decode("ascii"))
    monkeypatch.setenv("NEWSLETTER_PREVIEW_TOKEN", EDITOR_TOKEN)
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.test-key")
    return private


@pytest.fixture
def configure(write_config: Callable[..., Path], database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base = {"database": {"url": database_url}, "web": {"sendgrid_webhook": {"public_key_env": WEBHOOK_KEY_ENV}}}
        return load_settings(write_config({**base, **overrides}), env={})

    return make


@pytest.fixture
def web(engine: Engine, webhook_key: ec.EllipticCurvePrivateKey) -> Iterator[Callable[[Settings], TestClient]]:
    clients: list[TestClient] = []

    def client(settings: Settings) -> TestClient:
        made = TestClient(create_app(settings, engine=engine, secret=SECRET), base_url=BASE_URL)
        made.__enter__()
        clients.append(made)
        return made

    yield client
    for made in clients:
        made.__exit__(None, None, None)


def anchors(html: str) -> list[tuple[str, str]]:
    """(href, text) of every link of an HTML part, in order."""
    return [
        (a.get("href") or "", " ".join(a.text_content().split())) for a in lxml.html.document_fromstring(html).iter("a")
    ]


def test_report_figures_match_a_sendgrid_send_and_its_signed_events(
    configure: Callable[..., Settings],
    engine: Engine,
    issue_path: Path,
    sendgrid_sink: SendgridStub,
    web: Callable[[Settings], TestClient],
    webhook_key: ec.EllipticCurvePrivateKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    readers = add_subscribers(engine, 6)
    settings = configure(
        delivery={"backend": "sendgrid", "sendgrid": {"host": sendgrid_sink.url, "batch_size": 4}},
        tracking={"clicks": "per_subscriber", "opens": "per_subscriber"},
    )
    summary = send_issue(settings, issue_path, engine=engine)
    assert summary.unsent == 0 and sorted(sendgrid_sink.received) == sorted(readers)

    # SendGrid was asked to track, and told to leave the unsubscribe link alone
    body = next(r.body for r in sendgrid_sink.requests if r.accepted)
    assert body["tracking_settings"] == {
        "click_tracking": {"enable": True, "enable_text": False},
        "open_tracking": {"enable": True},
    }
    html = next(c["value"] for c in body["content"] if c["type"] == "text/html")
    unsubscribe = lxml.html.document_fromstring(html).xpath("//a[contains(@href, '%%unsubscribe_url')]")
    assert unsubscribe and all(a.get("clicktracking") == "off" for a in unsubscribe)
    tracked = [(href, text) for href, text in anchors(html) if "%%" not in href and "/archive" not in href]
    first_url, second_url = tracked[0][0], next(h for h, _ in tracked if h != tracked[0][0])

    delivered = sendgrid_sink.events("delivered")
    by_email = {e["email"]: e for e in delivered}
    at = int(time.time()) + 3600 * 5 + 60  # five hours after the send started

    def event(kind: str, email: str, n: int, **extra: Any) -> dict[str, Any]:
        args = {k: v for k, v in by_email[email].items() if k.startswith("newsletter_")}
        return {"sg_event_id": f"{kind}-{email}-{n}", "event": kind, "email": email, "timestamp": at, **args, **extra}

    r = readers
    posted = [
        *delivered[:5],  # the sixth never arrives: it bounces
        event("open", r[0], 1),
        event("open", r[0], 2),
        event("open", r[1], 1),
        event("click", r[0], 1, url=first_url),
        event("click", r[0], 2, url=first_url),
        event("click", r[1], 1, url=second_url),
        event("bounce", r[5], 1, type="bounce", reason="550 5.1.1 unknown"),
        event("bounce", r[4], 1, type="blocked", reason="421 later"),
        event("spamreport", r[2], 1),
        event("unsubscribe", r[3], 1),
    ]
    client = web(settings)
    request = event_body(*posted)
    answer = client.post("/webhooks/sendgrid", content=request, headers=sign(webhook_key, request, int(time.time())))
    assert answer.status_code == 200 and answer.json()["recorded"] == len(posted)

    found = report.issue_report(engine, SLUG)
    assert (found.ledger.audience, found.ledger.sent, found.ledger.rejected, found.ledger.ambiguous) == (6, 6, 0, 0)
    eng = found.engagement
    assert (eng.delivered, eng.bounced_hard, eng.bounced_soft, eng.spam_complaints, eng.unsubscribes) == (5, 1, 1, 1, 1)
    assert (eng.opens, eng.unique_opens, eng.clicks, eng.unique_clicks) == (3, 2, 3, 2)
    assert found.tracking == {"clicks": "per_subscriber", "opens": "per_subscriber"}
    assert found.rates.delivery == pytest.approx(5 / 6) and found.rates.click == pytest.approx(2 / 6)
    # clicks per link in the email's order, with the email's own label text
    order = [link.url for link in found.links]
    assert order[0] == first_url and order.index(first_url) < order.index(second_url)
    assert order == list(dict.fromkeys(h for h, _ in tracked))  # every tracked link, as in the email
    clicked = {link.url: link for link in found.links}
    assert (clicked[first_url].clicks, clicked[first_url].unique_clickers) == (2, 1)
    assert (clicked[second_url].clicks, clicked[second_url].unique_clickers) == (1, 1)
    assert clicked[first_url].label == next(text for href, text in tracked if href == first_url)
    assert [link.position for link in found.links] == sorted(link.position or 0 for link in found.links)
    assert all("/unsubscribe" not in link.url for link in found.links)
    hour = {h.hour: (h.opens, h.clicks) for h in found.hours if h.opens or h.clicks}

    expected = dt.datetime.fromtimestamp(at, dt.UTC) - found.started_at
    assert hour == {int(expected.total_seconds() // 3600): (3, 3)}

    # the same figures through the CLI, as JSON and CSV
    config = str(settings.config_path)
    assert main(["--config", config, "report", SLUG, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["engagement"]["unique_clicks"] == 2 and data["ledger"]["sent"] == 6
    assert "Apple Mail Privacy Protection" in data["opens_caveat"]
    assert main(["--config", config, "report", SLUG, "--format", "csv"]) == 0
    assert "delivery,bounced hard,1" in capsys.readouterr().out
    assert main(["--config", config, "report", "never-sent"]) != 0
    assert "never-sent: no send of this issue" in capsys.readouterr().err

    # the web pages: editors only
    assert client.get("/reports").status_code == 401
    assert client.get(f"/reports/{SLUG}").status_code == 401
    headers = {"Authorization": f"Bearer {EDITOR_TOKEN}"}
    listing = client.get("/reports", headers=headers)
    assert listing.status_code == 200 and f'href="/reports/{SLUG}"' in listing.text
    page = client.get(f"/reports/{SLUG}", headers=headers)
    assert page.status_code == 200 and "<svg" in page.text and "Apple Mail Privacy Protection" in page.text
    assert "<script" not in page.text
    assert client.get("/reports/never-sent", headers=headers).status_code == 404


def _sent_html(sender: MemorySender) -> list[str]:
    return [render.personalize_parts(b.email, d.recipient)[0] for b in sender.batches for d in b.deliveries]


def test_aggregate_clicks_go_through_the_redirect_and_name_nobody(
    configure: Callable[..., Settings], engine: Engine, issue_path: Path, web: Callable[[Settings], TestClient]
) -> None:
    add_subscribers(engine, 3)
    settings = configure()  # the defaults: clicks aggregate, opens off
    sender = MemorySender()
    send_issue(settings, issue_path, engine=engine, sender=sender)
    html = _sent_html(sender)
    assert len(set(html)) == 3  # the unsubscribe links differ, the tracked links do not
    links = anchors(html[0])
    redirects = [href for href, _ in links if href.startswith(f"{BASE_URL}/r/")]
    assert redirects and all(re.fullmatch(rf"{BASE_URL}/r/\d+\.[\w-]+", href) for href in redirects)
    assert any("/unsubscribe/" in href for href, _ in links)  # never through the redirect
    assert any(href == f"{BASE_URL}/archive" for href, _ in links)
    assert "/o/" not in html[0]  # opens are off

    client = web(settings)
    with engine.connect() as conn:
        recorded = dict(conn.execute(select(tracked_links.c.id, tracked_links.c.url)).all())
    token = redirects[0].rsplit("/", 1)[1]
    answer = client.get(f"/r/{token}", follow_redirects=False)
    assert answer.status_code == 302 and answer.headers["location"] == recorded[int(token.split(".")[0])]
    assert answer.headers["cache-control"].startswith("no-store")

    link_id, signature = token.split(".")
    other = max(recorded) + 1
    for bad in (
        f"{link_id}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}",  # bad signature
        f"{other}.{signature}",  # another id with this signature: never sent
        f"{int(link_id) + 1 if int(link_id) + 1 in recorded else other}.{signature}",  # a tampered id
        "not-a-token",
        f"{link_id}",
    ):
        assert client.get(f"/r/{bad}", follow_redirects=False).status_code == 404, bad
    assert client.get(f"/r/{token}/1.forged", follow_redirects=False).status_code == 404

    # aggregate: the click is counted, and no table says who clicked
    with engine.connect() as conn:
        clicks = conn.execute(select(webhook_events).where(webhook_events.c.event == "click")).all()
    assert len(clicks) == 1 and (clicks[0].subscriber_id, clicks[0].delivery_id) == (None, None)
    found = report.issue_report(engine, SLUG)
    assert found.engagement.clicks == 1 and found.engagement.unique_clicks is None
    assert found.rates.click == pytest.approx(1 / 3) and not found.rates.click_is_unique


def test_per_subscriber_tracking_keeps_the_reader_and_adds_the_pixel(
    configure: Callable[..., Settings], engine: Engine, issue_path: Path, web: Callable[[Settings], TestClient]
) -> None:
    add_subscribers(engine, 2)
    settings = configure(tracking={"clicks": "per_subscriber", "opens": "per_subscriber"})
    sender = MemorySender()
    send_issue(settings, issue_path, engine=engine, sender=sender)
    client = web(settings)
    for html, delivery in zip(_sent_html(sender), [d for b in sender.batches for d in b.deliveries], strict=True):
        redirect = next(href for href, _ in anchors(html) if "/r/" in href)
        assert re.fullmatch(rf"{BASE_URL}/r/\d+\.[\w-]+/{delivery.key}\.[\w-]+", redirect)
        pixel = re.search(rf'src="{BASE_URL}(/o/[^"]+\.gif)"', html)
        assert pixel is not None
        assert client.get(redirect.removeprefix(BASE_URL), follow_redirects=False).status_code == 302
        opened = client.get(pixel.group(1))
        assert opened.status_code == 200 and opened.headers["content-type"] == "image/gif"
        tampered = redirect.removeprefix(BASE_URL).replace(f"/{delivery.key}.", f"/{delivery.key + 1}.")
        assert client.get(tampered, follow_redirects=False).status_code == 404
    with engine.connect() as conn:
        kept = conn.execute(
            select(webhook_events.c.event, webhook_events.c.subscriber_id, webhook_events.c.delivery_id)
        ).all()
    assert len(kept) == 4 and all(row.subscriber_id is not None and row.delivery_id is not None for row in kept)
    found = report.issue_report(engine, SLUG)
    assert (found.engagement.unique_clicks, found.engagement.unique_opens) == (2, 2)


def test_a_batch_of_events_is_recorded_once_with_its_statuses(engine: Engine) -> None:
    """The batched ingest keeps exactly-once by sg_event_id, within a request and across them."""
    add_subscribers(engine, 2)
    now = dt.datetime(2024, 10, 28, 9, tzinfo=dt.UTC)
    batch = [
        {"sg_event_id": "a", "event": "delivered", "email": "reader0@example.net", "newsletter_issue": SLUG},
        {"sg_event_id": "a", "event": "delivered", "email": "reader0@example.net", "newsletter_issue": SLUG},
        {"sg_event_id": "b", "event": "unsubscribe", "email": "READER1@example.net", "newsletter_issue": SLUG},
        {"sg_event_id": "c", "event": "spamreport", "email": "reader1@example.net", "newsletter_issue": SLUG},
        {"event": "open"},
    ]
    first = events.apply_events(engine, batch, now=now)
    assert (first.received, first.recorded, first.duplicates, first.ignored) == (5, 3, 1, 1)
    assert first.status_changes == {"unsubscribed": 1, "complained": 1}
    again = events.apply_events(engine, batch, now=now)
    assert (again.recorded, again.duplicates, again.status_changes) == (0, 4, {})


def test_untracked_links_are_the_publications_own_pages(settings: Settings) -> None:
    pub = settings.publication
    base = pub.public_url
    assert tracking.is_untracked(f"{base}/unsubscribe/abc", pub)
    assert tracking.is_untracked(f"{base}/archive", pub) and tracking.is_untracked(f"{base}/archive/2024-10-25", pub)
    assert tracking.is_untracked(f"{base}/preferences/tok", pub)
    assert tracking.is_untracked("mailto:editor@example.org", pub)
    assert not tracking.is_untracked(f"{base}/archived-stories", pub)
    assert not tracking.is_untracked("https://elsewhere.example.com/archive", pub)


def test_one_click_unsubscribes_count_for_the_issue_once(
    configure: Callable[..., Settings], engine: Engine, issue_path: Path, web: Callable[[Settings], TestClient]
) -> None:
    from newsletter.store import subscribers

    readers = add_subscribers(engine, 2)
    settings = configure()
    send_issue(settings, issue_path, engine=engine, sender=MemorySender())
    client = web(settings)
    token = subscribers.get(engine, readers[0]).token
    for _ in range(2):  # a mail client may post twice
        answer = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 200
    found = report.issue_report(engine, SLUG)
    assert (found.engagement.unsubscribes, found.engagement.one_click_unsubscribes) == (1, 1)
    with engine.connect() as conn:
        kept = conn.execute(select(webhook_events.c.subscriber_id, webhook_events.c.delivery_id)).all()
    assert kept == [(None, None)]


def test_welcome_mails_count_for_the_issue_until_the_next_one(
    configure: Callable[..., Settings], engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    from newsletter import welcome
    from newsletter.store import ledger, subscribers

    settings = configure()
    add_subscribers(engine, 2)
    friday = dt.datetime(2024, 10, 25, 21, 0, tzinfo=dt.UTC)
    ledger.start_send(engine, SLUG, "Week one", now=friday)
    ledger.start_send(engine, "2024-11-01", "Week two", now=friday + dt.timedelta(days=7))
    sender = MemorySender()
    for n, days in enumerate((-1, 2, 3, 8)):  # one before week one, two in it, one in week two
        reader = subscribers.add(engine, f"new{n}@example.org", status="active")
        assert welcome.send_welcome(engine, settings, sender, reader.id, now=friday + dt.timedelta(days=days))
    assert report.issue_report(engine, SLUG).welcome_mails == 2
    assert report.issue_report(engine, "2024-11-01").welcome_mails == 1  # the latest: until now
    assert main(["--config", str(settings.config_path), "report", SLUG, "--format", "csv"]) == 0
    assert "sending,welcome mails to new readers until the next issue,2" in capsys.readouterr().out
