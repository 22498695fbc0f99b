"""The SMTP backend against a real aiosmtpd server on 127.0.0.1: plain, STARTTLS and
implicit TLS, AUTH from the environment, per-recipient refusals, dropped connections,
an unreachable server and a wrong password."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from newsletter.config import SmtpBackend, load_settings
from newsletter.errors import ConfigError, DeliveryError, PermanentDeliveryError
from newsletter.models import Recipient
from newsletter.render import RenderedEmail
from newsletter.senders import make_sender
from newsletter.senders.base import Delivery
from newsletter.senders.smtp import SmtpSender
from tests.senders.conftest import Certificate, SmtpServer, deliveries, free_port, make_batch

Factory = Callable[..., SmtpServer]


@pytest.fixture
def senders() -> Iterator[list[SmtpSender]]:
    made: list[SmtpSender] = []
    yield made
    for sender in made:
        sender.close()


def smtp(made: list[SmtpSender], port: int, security: str = "none", **kwargs: Any) -> SmtpSender:
    connections = kwargs.pop("connections", 2)
    sender = SmtpSender(
        SmtpBackend(
            host="127.0.0.1",
            port=port,
            security=security,  # type: ignore[arg-type]
            connections=connections,
            timeout_seconds=5,
        ),
        **kwargs,
    )
    made.append(sender)
    return sender


def received(server: SmtpServer) -> dict[str, email.message.EmailMessage]:
    """Recipient address -> the parsed message the server got."""
    out = {}
    for envelope in server.handler.messages:
        assert isinstance(envelope.content, bytes)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        [to] = envelope.rcpt_tos
        out[to] = msg
    return out


def test_plain_delivery(smtp_server_factory: Factory, senders: list[SmtpSender], rendered: RenderedEmail) -> None:
    server = smtp_server_factory()
    sender = smtp(senders, server.port)
    result = sender.send(make_batch(rendered, deliveries(6)))
    assert sorted(result.sent) == [1, 2, 3, 4, 5, 6]
    assert result.rejected == {} and result.retry == {}
    got = received(server)
    assert sorted(got) == [f"reader{k}@example.net" for k in range(1, 7)]
    msg = got["reader3@example.net"]
    assert server.handler.messages[0].mail_from == "newsletter@news.example.org"
    assert msg["To"] == "Reader 3 <reader3@example.net>"
    assert msg["From"] == "Statecraft Review <newsletter@news.example.org>"
    assert msg["Subject"] == rendered.subject
    assert msg["List-Unsubscribe"] == "<https://news.example.org/unsubscribe/token-3>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Message-ID"] and msg["Date"]
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    assert "https://news.example.org/unsubscribe/token-3" in text.get_content()
    assert 'href="https://news.example.org/unsubscribe/token-3"' in html.get_content()
    assert "%%" not in text.get_content() + html.get_content()
    # One connection per worker, reused for every message.
    ids = {m["Message-ID"] for m in got.values()}
    assert len(ids) == 6


def test_connections_are_reused_across_batches(
    smtp_server_factory: Factory, senders: list[SmtpSender], rendered: RenderedEmail
) -> None:
    server = smtp_server_factory()
    sender = smtp(senders, server.port, connections=2)
    for n in range(3):
        sender.send(make_batch(rendered, deliveries(4, start=1 + 4 * n)))
    assert len(server.handler.messages) == 12
    sessions = {id(e) for e in server.handler.messages}
    assert len(sessions) == 12
    assert len(sender._open) <= 2


def test_starttls_with_auth_from_the_environment(
    smtp_server_factory: Factory,
    certificate: Certificate,
    write_config: Any,
    rendered: RenderedEmail,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = smtp_server_factory(tls="starttls", context=certificate.server_context(), auth=("mailer", "s3cret"))
    path = write_config(
        {
            "delivery": {
                "backend": "smtp",
                "smtp": {
                    "host": "127.0.0.1",
                    "port": server.port,
                    "security": "starttls",
                    "username_env": "TEST_SMTP_USER",
                    "password_env": "TEST_SMTP_PASSWORD",
                },
            }
        }
    )
    settings = load_settings(path, env={})
    monkeypatch.setenv("TEST_SMTP_USER", "mailer")
    monkeypatch.delenv("TEST_SMTP_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="TEST_SMTP_PASSWORD"):
        make_sender(settings)
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "s3cret")
    sender = SmtpSender.from_settings(settings, tls_context=certificate.client_context())
    try:
        result = sender.send(make_batch(rendered, deliveries(3)))
    finally:
        sender.close()
    assert sorted(result.sent) == [1, 2, 3]
    assert len(server.handler.messages) == 3


def test_starttls_checks_the_certificate_by_default(
    smtp_server_factory: Factory, certificate: Certificate, senders: list[SmtpSender], rendered: RenderedEmail
) -> None:
    server = smtp_server_factory(tls="starttls", context=certificate.server_context())
    sender = smtp(senders, server.port, security="starttls")  # the system's CAs only
    with pytest.raises(PermanentDeliveryError, match=r"TLS with 127\.0\.0\.1:\d+ failed: .*certificate"):
        sender.send(make_batch(rendered, deliveries(2)))
    assert server.handler.messages == []


def test_starttls_refused_when_the_server_does_not_offer_it(
    smtp_server_factory: Factory, senders: list[SmtpSender], rendered: RenderedEmail
) -> None:
    server = smtp_server_factory()
    with pytest.raises(PermanentDeliveryError, match="does not offer STARTTLS"):
        smtp(senders, server.port, security="starttls").send(make_batch(rendered, deliveries(1)))


def test_implicit_tls(
    smtp_server_factory: Factory, certificate: Certificate, senders: list[SmtpSender], rendered: RenderedEmail
) -> None:
    server = smtp_server_factory(tls="tls", context=certificate.server_context(), auth=("u", "p"))
    sender = smtp(
        senders, server.port, security="tls", username="u", password="p", tls_context=certificate.client_context()
    )
    assert sorted(sender.send(make_batch(rendered, deliveries(2))).sent) == [1, 2]
    assert len(server.handler.messages) == 2


def test_wrong_password_is_permanent(
    smtp_server_factory: Factory, senders: list[SmtpSender], rendered: RenderedEmail
) -> None:
    server = smtp_server_factory(auth=("mailer", "s3cret"))
    sender = smtp(senders, server.port, username="mailer", password="wrong-password")
    with pytest.raises(PermanentDeliveryError) as info:
        sender.send(make_batch(rendered, deliveries(4)))
    assert "refused the login of 'mailer'" in str(info.value)
    assert "535" in str(info.value)
    assert "wrong-password" not in str(info.value)
    assert server.handler.messages == []
    # It does not try the same credentials again on the next batch.
    with pytest.raises(PermanentDeliveryError):
        sender.send(make_batch(rendered, deliveries(4)))


def test_a_recipient_refused_with_550(
    smtp_server_factory: Factory, senders: list[SmtpSender], rendered: RenderedEmail
) -> None:
    server = smtp_server_factory()
    server.handler.reject["reader2@example.net"] = "550 5.1.1 No such user here"
    server.handler.reject["reader4@example.net"] = "452 4.2.2 Mailbox full, try later"
    result = smtp(senders, server.port).send(make_batch(rendered, deliveries(5)))
    assert sorted(result.sent) == [1, 3, 5]
    assert result.rejected == {2: "550 5.1.1 No such user here"}
    assert result.retry == {4: "452 4.2.2 Mailbox full, try later"}
    assert sorted(received(server)) == ["reader1@example.net", "reader3@example.net", "reader5@example.net"]


def test_an_invalid_address_is_rejected_not_sent(
    smtp_server_factory: Factory, senders: list[SmtpSender], rendered: RenderedEmail
) -> None:
    server = smtp_server_factory()
    bad = Delivery(
        key=7, recipient=Recipient(email="no-at-sign", name="X", unsubscribe_url="https://news.example.org/u/7")
    )
    result = smtp(senders, server.port).send(make_batch(rendered, [*deliveries(1), bad]))
    assert result.sent == [1]
    assert list(result.rejected) == [7]


def test_a_connection_dropped_before_a_message_is_reopened(
    smtp_server_factory: Factory, senders: list[SmtpSender], rendered: RenderedEmail
) -> None:
    server = smtp_server_factory()
    server.handler.drop_at_mail = {3}  # the server hangs up at the third MAIL FROM
    result = smtp(senders, server.port, connections=1).send(make_batch(rendered, deliveries(5)))
    # Nothing of message 3 was handed over: reconnected and sent at once.
    assert sorted(result.sent) == [1, 2, 3, 4, 5]
    assert result.retry == {}
    assert sorted(received(server)) == [f"reader{k}@example.net" for k in range(1, 6)]


def test_a_connection_dropped_after_data_is_ambiguous_not_retried(
    smtp_server_factory: Factory, senders: list[SmtpSender], rendered: RenderedEmail
) -> None:
    server = smtp_server_factory()
    server.handler.drop_at_data = {2}  # hangs up after the second message's content
    sender = smtp(senders, server.port, connections=1)
    result = sender.send(make_batch(rendered, deliveries(4)))
    # Message 2 was handed over before the server hung up: it may have been queued, so
    # it is neither sent nor retried; the rest go on over a new connection.
    assert sorted(result.sent) == [1, 3, 4]
    assert result.retry == {} and list(result.ambiguous) == [2]
    assert "after the message was sent" in result.ambiguous[2]
    assert sorted(received(server)) == ["reader1@example.net", "reader3@example.net", "reader4@example.net"]


def test_a_connection_dropped_before_the_message_is_retried_on_a_new_one(
    smtp_server_factory: Factory, senders: list[SmtpSender], rendered: RenderedEmail
) -> None:
    server = smtp_server_factory()
    server.handler.drop_at_mail = {2}  # hangs up at the second MAIL FROM: nothing handed over
    sender = smtp(senders, server.port, connections=1)
    result = sender.send(make_batch(rendered, deliveries(3)))
    assert sorted(result.sent) == [1, 2, 3] and result.ambiguous == {} and result.retry == {}
    assert sorted(received(server)) == [f"reader{k}@example.net" for k in (1, 2, 3)]


def test_an_unreachable_server(senders: list[SmtpSender], rendered: RenderedEmail) -> None:
    port = free_port()
    sender = smtp(senders, port)
    with pytest.raises(DeliveryError) as info:
        sender.send(make_batch(rendered, deliveries(3)))
    assert not isinstance(info.value, PermanentDeliveryError)
    assert f"cannot reach 127.0.0.1:{port}" in str(info.value)


def test_a_server_that_goes_away_between_batches(
    smtp_server_factory: Factory, senders: list[SmtpSender], rendered: RenderedEmail
) -> None:
    server = smtp_server_factory()
    sender = smtp(senders, server.port, connections=1)
    assert sender.send(make_batch(rendered, deliveries(2))).sent == [1, 2]
    server.stop()
    with pytest.raises(DeliveryError) as info:
        sender.send(make_batch(rendered, deliveries(2, start=3)))
    assert not isinstance(info.value, PermanentDeliveryError)


def test_make_sender_builds_smtp_without_credentials(write_config: Any, project: Path) -> None:
    path = write_config(
        {
            "delivery": {
                "backend": "smtp",
                "smtp": {
                    "host": "127.0.0.1",
                    "port": 2525,
                    "security": "none",
                    "username_env": None,
                    "password_env": None,
                    "connections": 3,
                },
            }
        }
    )
    sender = make_sender(load_settings(path, env={}))
    try:
        assert sender.name == "smtp"
        assert sender.max_batch_size == 500
    finally:
        sender.close()


def test_lines_starting_with_a_dot_arrive_intact(
    smtp_server_factory: Factory, senders: list[SmtpSender], rendered: RenderedEmail
) -> None:
    from dataclasses import replace

    text = ".starts the part\n" + rendered.text + "\n.\n.leading dot\n..two dots\n"
    server = smtp_server_factory()
    result = smtp(senders, server.port).send(make_batch(replace(rendered, text=text), deliveries(1)))
    assert result.sent == [1]
    body = received(server)["reader1@example.net"].get_body(("plain",))
    assert body is not None
    content = body.get_content().replace("\r\n", "\n")  # as received: CRLF lines
    assert content.startswith(".starts the part\n")
    assert content.endswith("\n.\n.leading dot\n..two dots\n")
