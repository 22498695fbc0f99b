"""The pieces under ``bounces.fetch``: delivery tokens (signed, case-blind, unforgeable),
reading a DSN's notices (hard, soft, delayed, positive reports, a status only in the
diagnostic), stable event ids, and the SMTP sender naming only ledger deliveries."""

from __future__ import annotations

import email

import pytest

from newsletter import bounces, issuefile, render
from newsletter.config import SmtpBackend
from newsletter.senders.base import Batch
from newsletter.senders.smtp import SmtpSender
from newsletter.verp import DeliveryTokens
from tests.conftest import EXAMPLE_ISSUE
from tests.helpers import dsn
from tests.senders.conftest import deliveries, start_smtp_server

TOKENS = DeliveryTokens("parse-test-key")
ORIGINAL = b"From: newsletter@news.example.org\r\nMessage-ID: <x@y>\r\nSubject: Hi\r\n\r\nHello\r\n"


def test_tokens_are_signed_and_survive_case_folding() -> None:
    token = TOKENS.token(42)
    address = TOKENS.return_path("bounces@news.example.org", 42)
    assert address == f"bounces+{token}@news.example.org" and len(address.partition("@")[0]) <= 64
    assert TOKENS.delivery(address) == 42 and TOKENS.delivery(address.upper()) == 42
    assert TOKENS.delivery(TOKENS.message_id(42, "news.example.org")) == 42
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert TOKENS.delivery(f"bounces+{forged}@news.example.org") is None
    assert TOKENS.delivery(f"bounces+{token.replace('d42', 'd43')}@x") is None  # another delivery, same mac
    assert TOKENS.delivery(None) is None and TOKENS.delivery("bounces@news.example.org") is None
    assert TOKENS.message_id(42, "x") != TOKENS.message_id(42, "x")  # unique all the same


@pytest.mark.parametrize(
    ("status", "action", "kind"),
    [
        ("5.1.1", "failed", "hard"),
        ("4.2.2", "failed", "soft"),
        ("5.7.1", "failed", "hard"),
        ("4.4.1", "delayed", "soft"),
    ],
)
def test_notices(status: str, action: str, kind: str) -> None:
    to = TOKENS.return_path("bounces@news.example.org", 7)
    parsed = bounces.parse(
        dsn.dsn(ORIGINAL, envelope_to=to, recipient="r@example.net", status=status, action=action), TOKENS
    )
    (notice,) = parsed.notices
    assert (notice.action, notice.status, notice.bounce_type, notice.recipient) == (
        action,
        status,
        kind,
        "r@example.net",
    )
    assert parsed.delivery_id == 7 and notice.reason.startswith(status) and notice.at is not None


def test_a_status_only_in_the_diagnostic_and_a_positive_report() -> None:
    to = TOKENS.return_path("bounces@news.example.org", 7)
    raw = dsn.dsn(ORIGINAL, envelope_to=to, recipient="r@example.net", status="4.2.2").decode()
    no_status = raw.replace("Status: 4.2.2\r\n", "").replace("452 4.2.2", "452")
    (notice,) = bounces.parse(no_status.encode(), TOKENS).notices
    assert (notice.status, notice.bounce_type) == (None, "soft")
    delivered = raw.replace("Action: failed", "Action: delivered")
    with pytest.raises(bounces.NotUsable, match="no failed or delayed delivery"):
        bounces.parse(delivered.encode(), TOKENS)


def test_event_ids_are_stable_per_dsn_and_recipient() -> None:
    to = TOKENS.return_path("bounces@news.example.org", 7)
    raw = dsn.dsn(ORIGINAL, envelope_to=to, recipient="r@example.net", message_id="<dsn-1@mx>")
    first, again = bounces.parse(raw, TOKENS), bounces.parse(raw, TOKENS)
    other = bounces.parse(dsn.dsn(ORIGINAL, envelope_to=to, recipient="r@example.net", message_id="<dsn-2@mx>"), TOKENS)
    ids = [bounces.event_id(d, d.notices[0]) for d in (first, again, other)]
    assert ids[0] == ids[1] != ids[2] and ids[0].startswith("dsn:") and len(ids[0]) <= 100


def test_only_ledger_batches_carry_tokens(settings) -> None:
    email_ = render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings).email
    server = start_smtp_server()
    try:
        sender = SmtpSender(
            SmtpBackend(host="127.0.0.1", port=server.port, security="none", connections=1),
            return_path="bounces@news.example.org",
            tokens=TOKENS,
        )
        with sender:
            items = deliveries(2, start=11)
            sender.send(Batch(issue="i", batch_id="b1", email=email_, deliveries=items, ledger=True))
            sender.send(Batch(issue="i-test", batch_id="b2", email=email_, deliveries=deliveries(1, start=11)))
        first, second, test = server.handler.messages
        assert TOKENS.delivery(first.mail_from) == 11 and TOKENS.delivery(second.mail_from) == 12
        assert TOKENS.delivery(email.message_from_bytes(first.original_content)["Message-ID"]) == 11
        # a test send or a notice: keys are no ledger rows, so no token names them
        assert test.mail_from == "bounces@news.example.org"
        assert TOKENS.delivery(email.message_from_bytes(test.original_content)["Message-ID"]) is None
    finally:
        server.stop()
