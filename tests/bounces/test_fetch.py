"""Bounces for SMTP sends, end to end: the issue sent through a real SMTP server
(aiosmtpd) names each delivery in its envelope sender, DSNs composed per RFC 3464 go
into a real IMAP server (dovecot), and ``bounces.fetch`` applies them like the SendGrid
webhook's events: hard bounces at once, soft ones at the limit, each notice once."""

from __future__ import annotations

import datetime as dt
import email

import pytest
import yaml
from sqlalchemy import select

from newsletter import bounces
from newsletter.config import Settings, load_settings
from newsletter.store import events, subscribers
from newsletter.store.tables import deliveries, webhook_events
from newsletter.verp import DeliveryTokens
from tests.bounces.conftest import RETURN_PATH, SECRET, Mailbox, Sent
from tests.helpers import dsn

TOKENS = DeliveryTokens(SECRET)


def _settings(done: Sent, mailbox: Mailbox, delete: bool = False, **imap: object) -> Settings:
    """The sent issue's settings with ``mailbox`` as the bounce mailbox."""
    data = yaml.safe_load(done.config.read_text(encoding="utf-8"))
    data["bounces"]["imap"] = mailbox.imap_config(**imap)
    data["bounces"]["delete_processed"] = delete
    done.config.write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_settings(done.config, env={})


@pytest.fixture
def imap_env(mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> Mailbox:
    for name, value in mailbox.env().items():
        monkeypatch.setenv(name, value)
    return mailbox


def _rows(engine):
    with engine.connect() as conn:
        return conn.execute(select(webhook_events).order_by(webhook_events.c.received_at)).all()


def test_each_smtp_message_names_its_delivery(sent) -> None:
    done = sent(3)
    with done.engine.connect() as conn:
        rows = {r.subscriber_id: r.id for r in conn.execute(select(deliveries.c.id, deliveries.c.subscriber_id))}
    for rcpt, envelope in done.envelopes.items():
        delivery_id = rows[subscribers.get(done.engine, rcpt).id]
        local, _, domain = envelope.rpartition("@")
        assert domain == "news.example.org" and local.startswith("bounces+d")
        assert TOKENS.delivery(envelope) == delivery_id
        message = email.message_from_bytes(done.messages[rcpt])
        assert TOKENS.delivery(message["Message-ID"]) == delivery_id
        assert message["From"].endswith("<newsletter@news.example.org>")  # the From is unchanged
    # Each message's token is its own; another key cannot read or forge them.
    assert len(set(done.envelopes.values())) == 3
    assert all(DeliveryTokens("another key").delivery(e) is None for e in done.envelopes.values())


def test_fetch_applies_hard_soft_mangled_and_leaves_the_rest(sent, imap_env: Mailbox) -> None:
    done = sent(5)
    settings = _settings(done, imap_env)
    r = sorted(done.envelopes)
    hard, soft, flat, by_id, qmail = r
    # a forger who guesses delivery ids but not the key
    guess = b"Message-ID: <d2-0123456789abcdef.1@news.example.org>\r\nSubject: x\r\n\r\nx\r\n"
    forged = dsn.dsn(guess, envelope_to="bounces+d1-0123456789abcdef@news.example.org", recipient=hard)
    imap_env.append(
        dsn.dsn(done.messages[hard], envelope_to=done.envelopes[hard], recipient=hard, status="5.1.1"),
        dsn.dsn(done.messages[soft], envelope_to=done.envelopes[soft], recipient=soft, status="4.2.2"),
        dsn.mangled(done.messages[flat], envelope_to=done.envelopes[flat], recipient=flat),
        # delivered to the bare address (the +token dropped): the returned Message-ID tells
        dsn.dsn(done.messages[by_id], envelope_to=RETURN_PATH, recipient=by_id, status="5.2.1"),
        dsn.qmail_bounce(envelope_to=done.envelopes[qmail], recipient=qmail),
        dsn.auto_reply(done.messages[soft], envelope_to=done.envelopes[soft]),
        forged,
        b"this is no email message at all \xff\xfe",
        # signed with our key, for a delivery this database never had (restored from a backup)
        dsn.dsn(guess, envelope_to=TOKENS.return_path(RETURN_PATH, 999_999), recipient=hard),
    )
    report = bounces.fetch(settings, done.engine)
    assert (report.read, report.hard, report.soft, report.deferred) == (9, 4, 1, 0), report
    assert report.status_changes == {"bounced": 4}
    status = {e: subscribers.get(done.engine, e).status for e in r}
    assert status == {hard: "bounced", soft: "active", flat: "bounced", by_id: "bounced", qmail: "bounced"}
    left = dict(report.left)
    assert sorted(left) == ["INBOX uid 6", "INBOX uid 7", "INBOX uid 8", "INBOX uid 9"]
    assert "not a bounce: an automatic reply ('Out of office: " in left["INBOX uid 6"]
    assert "names no delivery of ours" in left["INBOX uid 7"]
    assert left["INBOX uid 8"].startswith("not a bounce: no failed or delayed delivery")
    assert left["INBOX uid 9"] == "a bounce for delivery 999999, which this database does not have"
    # What the report counts: the webhook's table, with the DSN's diagnostic.
    rows = {row.subscriber_id: row for row in _rows(done.engine)}
    row = rows[subscribers.get(done.engine, hard).id]
    assert (row.event, row.bounce_type, row.issue) == ("bounce", "hard", "2024-10-25")
    assert row.sg_event_id.startswith("dsn:") and row.delivery_id == TOKENS.delivery(done.envelopes[hard])
    assert "5.1.1" in row.reason and "User unknown" in row.reason
    assert rows[subscribers.get(done.engine, soft).id].bounce_type == "soft"
    assert "Mailbox full" in rows[subscribers.get(done.engine, soft).id].reason
    # Applied messages are flagged; the rest are left (flagged as reported once).
    flags = imap_env.flags()
    assert sum("$NewsletterBounce" in f and "\\Seen" in f for f in flags) == 5
    assert sum("$NewsletterSkipped" in f and "\\Seen" not in f for f in flags) == 4
    again = bounces.fetch(settings, done.engine)
    assert (again.read, again.left, again.status_changes) == (0, [], {})


def test_a_reread_mailbox_changes_nothing(sent, imap_env: Mailbox) -> None:
    done = sent(1)
    settings = _settings(done, imap_env)
    (rcpt,) = done.envelopes
    notice = dsn.dsn(done.messages[rcpt], envelope_to=done.envelopes[rcpt], recipient=rcpt, status="4.4.7")
    imap_env.append(notice)
    first = bounces.fetch(settings, done.engine)
    imap_env.append(notice)  # the same DSN again (a restored mailbox, a second copy)
    second = bounces.fetch(settings, done.engine)
    assert (first.soft, first.duplicates, second.soft, second.duplicates, second.read) == (1, 0, 1, 1, 1)
    assert len(_rows(done.engine)) == 1


def test_soft_bounces_from_dsns_and_sendgrid_share_the_limit(sent, imap_env: Mailbox) -> None:
    done = sent(2, bounces={"soft_limit": 3, "soft_window_days": 30})
    settings = _settings(done, imap_env)
    a, b = sorted(done.envelopes)
    now = dt.datetime.now(dt.UTC)
    # b: one soft bounce 40 days ago (outside the window) and one now: still active
    old = now - dt.timedelta(days=40)
    imap_env.append(
        dsn.dsn(done.messages[b], envelope_to=done.envelopes[b], recipient=b, status="4.2.2", at=old),
        dsn.dsn(done.messages[b], envelope_to=done.envelopes[b], recipient=b, status="4.2.2"),
    )
    # a: two soft bounces through SendGrid's webhook, then one DSN: the third marks it
    soft = events.SoftBounces(3, 30)
    for n in (1, 2):
        events.apply_events(
            done.engine,
            [{"sg_event_id": f"sg-{n}", "event": "bounce", "type": "blocked", "email": a}],
            soft_bounces=soft,
        )
    assert subscribers.get(done.engine, a).status == "active"
    imap_env.append(dsn.dsn(done.messages[a], envelope_to=done.envelopes[a], recipient=a, status="4.7.1"))
    report = bounces.fetch(settings, done.engine)
    assert report.soft == 3 and report.status_changes == {"bounced": 1}
    assert subscribers.get(done.engine, a).status == "bounced"
    assert subscribers.get(done.engine, b).status == "active"


def test_a_delay_notice_is_a_deferral_not_a_bounce(sent, imap_env: Mailbox) -> None:
    done = sent(1)
    settings = _settings(done, imap_env)
    (rcpt,) = done.envelopes
    imap_env.append(
        dsn.dsn(done.messages[rcpt], envelope_to=done.envelopes[rcpt], recipient=rcpt, status="4.4.1", action="delayed")
    )
    report = bounces.fetch(settings, done.engine)
    assert (report.deferred, report.soft, report.hard) == (1, 0, 0)
    assert [(r.event, r.bounce_type) for r in _rows(done.engine)] == [("deferred", None)]
    assert subscribers.get(done.engine, rcpt).status == "active"


def test_processed_messages_can_be_moved_or_deleted(sent, imap_env: Mailbox) -> None:
    done = sent(2)
    a, b = sorted(done.envelopes)
    imap_env.append(
        dsn.dsn(done.messages[a], envelope_to=done.envelopes[a], recipient=a),
        dsn.auto_reply(done.messages[a], envelope_to=done.envelopes[a]),
    )
    report = bounces.fetch(_settings(done, imap_env, processed_folder="Processed"), done.engine)
    assert report.hard == 1 and len(report.left) == 1
    assert (imap_env.count("INBOX"), imap_env.count("Processed")) == (1, 1)  # the auto-reply stays
    imap_env.append(dsn.dsn(done.messages[b], envelope_to=done.envelopes[b], recipient=b))
    report = bounces.fetch(_settings(done, imap_env, processed_folder="Processed", delete=True), done.engine)
    assert report.hard == 1
    assert (imap_env.count("INBOX"), imap_env.count("Processed")) == (1, 1)
