"""The SendGrid backend against its stand-in misbehaving as real networks and APIs do:
what each fault makes of a batch (retry, ambiguous, rejected per recipient, permanent),
judged against what the server received and accepted; addresses the API cannot take;
and the check before a send (``GET /v3/scopes``)."""

from __future__ import annotations

import pytest

from newsletter.errors import AmbiguousDeliveryError, DeliveryError, PermanentDeliveryError
from newsletter.models import Recipient
from newsletter.render import RenderedEmail
from newsletter.senders.base import Delivery
from tests.senders.conftest import Reply, SendgridStub, deliveries, free_port, make_batch
from tests.senders.test_sendgrid import sender_for

TIMEOUT = 0.3


def sent_to(stub: SendgridStub) -> list[list[str]]:
    """The addresses of each request the server read, in order."""
    return [[p["to"][0]["email"] for p in r.body["personalizations"]] for r in stub.requests]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("late", f"the request was sent but no answer came from .* within {TIMEOUT:g} s"),
        ("close", "the request was sent but the connection to .* broke before the answer \\(RemoteDisconnected\\)"),
    ],
)
def test_an_accepted_request_without_an_answer_is_ambiguous_and_not_retried(
    fault: str, reason: str, sendgrid_stub: SendgridStub, rendered: RenderedEmail
) -> None:
    sendgrid_stub.late_seconds = 2 * TIMEOUT
    sendgrid_stub.queue(fault)
    with pytest.raises(AmbiguousDeliveryError, match=reason):
        sender_for(sendgrid_stub.url, timeout_seconds=TIMEOUT).send(make_batch(rendered, deliveries(3)))
    # The server took the batch; the sender asked once and did not ask again.
    assert len(sendgrid_stub.requests) == 1 and sendgrid_stub.requests[0].accepted
    assert sendgrid_stub.received == [f"reader{k}@example.net" for k in (1, 2, 3)]


def test_a_connection_closed_before_the_body_was_read_is_not_a_proof_of_failure(
    sendgrid_stub: SendgridStub, rendered: RenderedEmail
) -> None:
    # The request left whole before the server hung up: the client cannot tell this from
    # a close after reading, so it must not retry.
    sendgrid_stub.queue("drop")
    with pytest.raises(AmbiguousDeliveryError, match="broke before the answer"):
        sender_for(sendgrid_stub.url).send(make_batch(rendered, deliveries(3)))
    assert [r.accepted for r in sendgrid_stub.requests] == [False] and sendgrid_stub.received == []


@pytest.mark.parametrize(
    ("reply", "retry_after", "reason"),
    [
        (Reply(status=429, headers={"Retry-After": "3"}), 3.0, "answered 429"),
        (Reply(status=503, headers={"Retry-After": "0"}), 0.0, "answered 503"),
        (Reply(status=500, body=b"upstream trouble"), None, "answered 500: upstream trouble"),
    ],
)
def test_an_error_status_proves_nothing_was_accepted_and_may_be_retried(
    reply: Reply, retry_after: float | None, reason: str, sendgrid_stub: SendgridStub, rendered: RenderedEmail
) -> None:
    sendgrid_stub.queue(reply)
    sender = sender_for(sendgrid_stub.url)
    with pytest.raises(DeliveryError, match=reason) as info:
        sender.send(make_batch(rendered, deliveries(2)))
    assert type(info.value) is DeliveryError  # neither ambiguous nor permanent
    assert info.value.retry_after == retry_after  # the send job waits as long as asked
    assert sendgrid_stub.received == []
    assert sender.send(make_batch(rendered, deliveries(2))).sent == [1, 2]
    assert sendgrid_stub.received == ["reader1@example.net", "reader2@example.net"]


def test_a_refused_personalization_is_rejected_and_the_rest_go_at_once(
    sendgrid_stub: SendgridStub, rendered: RenderedEmail
) -> None:
    sendgrid_stub.queue(Reply(refuse=(1,)))
    result = sender_for(sendgrid_stub.url).send(make_batch(rendered, deliveries(3)))
    assert result.sent == [1, 3] and result.retry == {} and result.ambiguous == {}
    assert result.rejected == {
        2: "sendgrid refused it: personalizations.1.to.0.email: Does not contain a valid address."
    }
    # SendGrid refuses a whole request that names a bad personalization.
    assert sent_to(sendgrid_stub) == [
        ["reader1@example.net", "reader2@example.net", "reader3@example.net"],
        ["reader1@example.net", "reader3@example.net"],
    ]
    assert [r.accepted for r in sendgrid_stub.requests] == [False, True]
    assert sendgrid_stub.received == ["reader1@example.net", "reader3@example.net"]


def test_a_refusal_then_an_unanswered_request_keeps_the_refusal(
    sendgrid_stub: SendgridStub, rendered: RenderedEmail
) -> None:
    sendgrid_stub.late_seconds = 2 * TIMEOUT
    sendgrid_stub.queue(Reply(refuse=(0,)), "late")
    bad = Delivery(key=9, recipient=Recipient(email="zoë@example.org", unsubscribe_url="https://x/u/9"))
    result = sender_for(sendgrid_stub.url, timeout_seconds=TIMEOUT).send(make_batch(rendered, [bad, *deliveries(3)]))
    # Two recipients are proven refused (one before the request, one by SendGrid); only
    # the last request's recipients may have arrived.
    assert sorted(result.rejected) == [1, 9] and result.sent == []
    assert sorted(result.ambiguous) == [2, 3]
    assert "no answer came" in result.ambiguous[2]
    assert sendgrid_stub.received == ["reader2@example.net", "reader3@example.net"]


def test_a_refusal_on_every_round_is_permanent(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    sendgrid_stub.queue(*[Reply(refuse=(0,)) for _ in range(10)])
    with pytest.raises(PermanentDeliveryError, match="kept refusing recipients of batch b-1"):
        sender_for(sendgrid_stub.url).send(make_batch(rendered, deliveries(10)))
    assert sendgrid_stub.received == [] and len(sendgrid_stub.requests) == 5


def test_an_idn_domain_is_sent_punycoded(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    idn = Delivery(
        key=7,
        recipient=Recipient(
            email="user@bücher.example", name="Ute", unsubscribe_url="https://news.example.org/unsubscribe/t7"
        ),
    )
    result = sender_for(sendgrid_stub.url).send(make_batch(rendered, [idn]))
    assert result.sent == [7]
    [personalization] = sendgrid_stub.delivered
    assert personalization["to"] == [{"email": "user@xn--bcher-kva.example", "name": "Ute"}]


def test_a_non_ascii_local_part_is_rejected_before_the_request(
    sendgrid_stub: SendgridStub, rendered: RenderedEmail
) -> None:
    zoe = Delivery(
        key=5, recipient=Recipient(email="zoë@example.org", unsubscribe_url="https://news.example.org/unsubscribe/t5")
    )
    result = sender_for(sendgrid_stub.url).send(make_batch(rendered, [*deliveries(2), zoe]))
    assert result.sent == [1, 2]
    assert result.rejected == {
        5: "sendgrid cannot send to 'zoë@example.org': a non-ASCII local part "
        "(SMTPUTF8) is not accepted by the SendGrid API"
    }
    assert sent_to(sendgrid_stub) == [["reader1@example.net", "reader2@example.net"]]


def test_check_passes_with_the_mail_send_scope(sendgrid_stub: SendgridStub) -> None:
    sender_for(sendgrid_stub.url).check()
    assert sendgrid_stub.checks == 1 and sendgrid_stub.requests == []


def test_check_refuses_a_key_without_the_mail_send_scope(sendgrid_stub: SendgridStub) -> None:
    sendgrid_stub.scopes = ["alerts.read", "stats.read"]
    with pytest.raises(PermanentDeliveryError, match="lacks the mail.send scope"):
        sender_for(sendgrid_stub.url).check()


def test_check_refuses_a_key_the_api_refuses(sendgrid_stub: SendgridStub) -> None:
    sendgrid_stub.scopes_status = 401
    with pytest.raises(PermanentDeliveryError, match="answered 401: authorization required"):
        sender_for(sendgrid_stub.url).check()


def test_check_of_an_unreachable_host_may_be_retried() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DeliveryError, match=f"cannot reach {url}") as info:
        sender_for(url).check()
    assert type(info.value) is DeliveryError
