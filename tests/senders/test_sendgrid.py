"""The SendGrid backend against a real HTTP server on 127.0.0.1 standing in for
api.sendgrid.com: the exact request, the 202 and its X-Message-Id, and every fault."""

from __future__ import annotations

import email.utils
import json
import logging
import time
from dataclasses import replace

import pytest

from newsletter import render
from newsletter.config import SendgridBackend, Settings, load_settings
from newsletter.errors import ConfigError, DeliveryError, PermanentDeliveryError
from newsletter.models import Recipient
from newsletter.render import RenderedEmail
from newsletter.senders import make_sender
from newsletter.senders.base import Delivery
from newsletter.senders.sendgrid import SendgridSender
from tests.conftest import VICTIM, assert_only_templates_personalize, forged_placeholder_issue
from tests.senders.conftest import Reply, SendgridStub, deliveries, free_port, make_batch

API_KEY = "SG.test-key-that-must-never-leak"


def sender_for(url: str, **config: object) -> SendgridSender:
    return SendgridSender(API_KEY, SendgridBackend(host=url, **config))  # type: ignore[arg-type]


def test_request_payload(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    sender = sender_for(sendgrid_stub.url, categories=["newsletter", "weekly"])
    items = deliveries(2)
    items.append(
        Delivery(
            key=9,
            recipient=Recipient(
                email="ann@example.org", name="Ann <& Bob>", unsubscribe_url="https://news.example.org/unsubscribe/t9"
            ),
        )
    )
    items.append(
        Delivery(
            key=10,
            recipient=Recipient(email="noname@example.org", unsubscribe_url="https://news.example.org/unsubscribe/t10"),
        )
    )

    result = sender.send(make_batch(rendered, items, batch_id="batch-42"))

    assert result.sent == [1, 2, 9, 10]
    assert result.rejected == {} and result.retry == {}
    assert result.message_id == "msg-1"
    [request] = sendgrid_stub.requests
    assert request.path == "/v3/mail/send"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Content-Type"] == "application/json; charset=utf-8"  # compact UTF-8 JSON
    body = request.body
    tokens = rendered.placeholders
    assert body["personalizations"][0] == {
        "to": [{"email": "reader1@example.net", "name": "Reader 1"}],
        "substitutions": {
            tokens["unsubscribe_url"]: "https://news.example.org/unsubscribe/token-1",
            tokens["preferences_url"]: "https://news.example.org/preferences/token-1",
            tokens["email"]: "reader1@example.net",
            tokens["email_html"]: "reader1@example.net",
            tokens["name"]: "Reader 1",
            tokens["name_html"]: "Reader 1",
        },
        "headers": {
            "List-Unsubscribe": "<https://news.example.org/unsubscribe/token-1>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        "custom_args": {"newsletter_issue": "2024-10-25", "newsletter_batch": "batch-42", "newsletter_delivery": "1"},
    }
    ann = body["personalizations"][2]
    assert ann["to"] == [{"email": "ann@example.org", "name": "Ann <& Bob>"}]
    assert ann["substitutions"][tokens["name"]] == "Ann <& Bob>"
    assert ann["substitutions"][tokens["name_html"]] == "Ann &lt;&amp; Bob&gt;"
    assert body["personalizations"][3]["to"] == [{"email": "noname@example.org"}]
    assert body["from"] == {"email": "newsletter@news.example.org", "name": "Statecraft Review"}
    assert body["reply_to"] == {"email": "editors@news.example.org"}
    assert body["subject"] == rendered.subject
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["content"][0]["value"] == rendered.text
    assert body["content"][1]["value"] == rendered.html
    assert tokens["unsubscribe_url"] in body["content"][1]["value"]  # SendGrid substitutes
    assert body["categories"] == ["newsletter", "weekly"]
    assert body["headers"] == {
        "X-Newsletter-Issue": "2024-10-25",
        "List-Id": '"Statecraft Review" <diplomacy-watch.news.example.org>',
    }
    assert "mail_settings" not in body


def test_placeholder_lookalikes_in_content_arrive_literally(sendgrid_stub: SendgridStub, settings: Settings) -> None:
    email = render.build_issue(forged_placeholder_issue(), settings).email
    sender_for(sendgrid_stub.url).send(make_batch(email, [Delivery(key=1, recipient=VICTIM)]))
    body = sendgrid_stub.requests[0].body
    [personalization] = body["personalizations"]
    # What SendGrid does with the request: each key replaced by its value, everywhere.
    subject, text, html = body["subject"], body["content"][0]["value"], body["content"][1]["value"]
    for key, value in personalization["substitutions"].items():
        subject, text, html = (part.replace(key, value) for part in (subject, text, html))
    assert_only_templates_personalize(subject, html, text)


def test_unsubscribe_mailto_is_a_second_entry(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    from dataclasses import replace

    email = replace(rendered, unsubscribe_mailto="unsubscribe@news.example.org")
    sender_for(sendgrid_stub.url).send(make_batch(email, deliveries(1)))
    headers = sendgrid_stub.requests[0].body["personalizations"][0]["headers"]
    assert headers["List-Unsubscribe"] == (
        "<https://news.example.org/unsubscribe/token-1>, <mailto:unsubscribe@news.example.org?subject=unsubscribe>"
    )


def test_sandbox_mode_and_200(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    sendgrid_stub.replies.append(Reply(status=200))
    result = sender_for(sendgrid_stub.url, sandbox=True).send(make_batch(rendered, deliveries(3)))
    assert result.sent == [1, 2, 3]
    assert result.message_id is None
    assert sendgrid_stub.requests[0].body["mail_settings"] == {"sandbox_mode": {"enable": True}}


def test_a_full_batch_is_one_request(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    sender = sender_for(sendgrid_stub.url)
    assert sender.max_batch_size == 1000
    result = sender.send(make_batch(rendered, deliveries(1000)))
    assert len(result.sent) == 1000
    [request] = sendgrid_stub.requests
    assert len(request.body["personalizations"]) == 1000
    assert len({p["to"][0]["email"] for p in request.body["personalizations"]}) == 1000


def test_a_batch_over_1000_is_refused_before_sending(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    with pytest.raises(PermanentDeliveryError, match="1001 recipients is over the 1000"):
        sender_for(sendgrid_stub.url).send(make_batch(rendered, deliveries(1001)))
    assert sendgrid_stub.requests == []


ERROR_BODY = json.dumps(
    {
        "errors": [
            {"message": "The from address does not match a verified Sender Identity.", "field": "from"},
            {"message": "Invalid type.", "field": "personalizations.0.to"},
        ]
    }
).encode()


@pytest.mark.parametrize("status", [400, 401, 403, 413])
def test_refusals_are_permanent_with_sendgrids_messages(
    status: int, sendgrid_stub: SendgridStub, rendered: RenderedEmail
) -> None:
    sendgrid_stub.replies.append(Reply(status=status, body=ERROR_BODY, headers={"Content-Type": "application/json"}))
    with pytest.raises(PermanentDeliveryError) as info:
        sender_for(sendgrid_stub.url).send(make_batch(rendered, deliveries(2)))
    message = str(info.value)
    assert f"answered {status}" in message
    assert "from: The from address does not match a verified Sender Identity." in message
    assert "personalizations.0.to: Invalid type." in message
    assert API_KEY not in message


def test_an_echoed_key_is_redacted(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    body = json.dumps({"errors": [{"message": f"bad key {API_KEY}"}]}).encode()
    sendgrid_stub.replies.append(Reply(status=401, body=body))
    with pytest.raises(PermanentDeliveryError) as info:
        sender_for(sendgrid_stub.url).send(make_batch(rendered, deliveries(1)))
    assert API_KEY not in str(info.value)
    assert "[API key]" in str(info.value)


def test_429_with_retry_after(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    sendgrid_stub.replies.append(
        Reply(status=429, headers={"Retry-After": "7"}, body=b'{"errors":[{"message":"too many requests"}]}')
    )
    with pytest.raises(DeliveryError) as info:
        sender_for(sendgrid_stub.url).send(make_batch(rendered, deliveries(2)))
    assert not isinstance(info.value, PermanentDeliveryError)
    assert info.value.retry_after == 7.0
    assert "429" in str(info.value) and "too many requests" in str(info.value)


def test_429_with_ratelimit_reset(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    reset = int(time.time()) + 120
    sendgrid_stub.replies.append(
        Reply(
            status=429,
            headers={"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)},
        )
    )
    with pytest.raises(DeliveryError) as info:
        sender_for(sendgrid_stub.url).send(make_batch(rendered, deliveries(2)))
    assert not isinstance(info.value, PermanentDeliveryError)
    assert info.value.retry_after is not None
    assert 60 < info.value.retry_after <= 120


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_may_be_retried(status: int, sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    sendgrid_stub.replies.append(Reply(status=status, body=b"upstream trouble"))
    sender = sender_for(sendgrid_stub.url)
    with pytest.raises(DeliveryError) as info:
        sender.send(make_batch(rendered, deliveries(2)))
    assert not isinstance(info.value, PermanentDeliveryError)
    assert info.value.retry_after is None
    assert f"answered {status}: upstream trouble" in str(info.value)
    # The same sender goes on working once the service recovers.
    assert sender.send(make_batch(rendered, deliveries(2))).sent == [1, 2]


def test_503_with_retry_after(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    sendgrid_stub.replies.append(Reply(status=503, headers={"Retry-After": "30"}))
    with pytest.raises(DeliveryError) as info:
        sender_for(sendgrid_stub.url).send(make_batch(rendered, deliveries(1)))
    assert info.value.retry_after == 30.0


def test_a_slow_answer_hits_the_timeout(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    sendgrid_stub.replies.append(Reply(hang=True))
    with pytest.raises(DeliveryError) as info:
        sender_for(sendgrid_stub.url, timeout_seconds=0.3).send(make_batch(rendered, deliveries(1)))
    assert not isinstance(info.value, PermanentDeliveryError)
    assert "no answer" in str(info.value) and "0.3 s" in str(info.value)


def test_a_refused_connection(rendered: RenderedEmail) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DeliveryError) as info:
        sender_for(url).send(make_batch(rendered, deliveries(1)))
    assert not isinstance(info.value, PermanentDeliveryError)
    assert f"cannot reach {url}" in str(info.value)
    assert API_KEY not in str(info.value)


def test_the_key_stays_out_of_debug_logs(
    sendgrid_stub: SendgridStub, rendered: RenderedEmail, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        sender = sender_for(sendgrid_stub.url)
        sender.send(make_batch(rendered, deliveries(1)))
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(sender)


def test_make_sender_reads_the_key_from_the_named_variable(
    sendgrid_stub: SendgridStub, write_config: object, rendered: RenderedEmail, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(
        {
            "delivery": {
                "backend": "sendgrid",
                "sendgrid": {  # type: ignore[operator]
                    "api_key_env": "TEST_SG_KEY",
                    "host": sendgrid_stub.url,
                    "timeout_seconds": 5,
                },
            }
        }
    )
    settings = load_settings(path, env={})
    monkeypatch.delenv("TEST_SG_KEY", raising=False)
    with pytest.raises(ConfigError, match="TEST_SG_KEY"):
        make_sender(settings)
    monkeypatch.setenv("TEST_SG_KEY", "SG.from-env")
    sender = make_sender(settings)
    assert sender.name == "sendgrid"
    sender.send(make_batch(rendered, deliveries(1)))
    assert sendgrid_stub.requests[0].headers["Authorization"] == "Bearer SG.from-env"


def test_a_recipient_with_a_line_break_is_rejected_not_sent(
    sendgrid_stub: SendgridStub, rendered: RenderedEmail
) -> None:
    bad = Delivery(
        key=3,
        recipient=Recipient(email="eve@example.org", name="Eve", unsubscribe_url="https://x/u\r\nBcc: all@example.org"),
    )
    result = sender_for(sendgrid_stub.url).send(make_batch(rendered, [*deliveries(2), bad]))
    assert result.sent == [1, 2]
    assert list(result.rejected) == [3]
    sent_to = [p["to"][0]["email"] for p in sendgrid_stub.requests[0].body["personalizations"]]
    assert sent_to == ["reader1@example.net", "reader2@example.net"]


# name as stored -> to[].name as SendGrid must receive it
NAMES = {
    "Ada Lovelace": "Ada Lovelace",  # plain: unchanged
    "Ann <& Bob>": "Ann <& Bob>",  # no "," or ";": unchanged
    'Ada "the Countess" Lovelace': 'Ada "the Countess" Lovelace',  # quotes alone: unchanged
    "Zoë Ådahl": "Zoë Ådahl",  # non-ASCII: unchanged
    "Lovelace, Ada": '"Lovelace, Ada"',
    "Lovelace; Ada": '"Lovelace; Ada"',
    'Lovelace, Ada; "the Countess"': '"Lovelace, Ada; \\"the Countess\\""',
    "C:\\Users\\ada, admin": '"C:\\\\Users\\\\ada, admin"',
    "ends in a backslash, \\": '"ends in a backslash, \\\\"',  # cannot escape the closing quote
    "Müller, Jürgen": '"Müller, Jürgen"',  # quoted, the non-ASCII left as it is
    '"Lovelace, Ada"': '"\\"Lovelace, Ada\\""',  # already in quotes: text, quoted again
}


def test_names_with_a_comma_or_semicolon_are_quoted(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    items = [
        Delivery(key=k, recipient=Recipient(email=f"r{k}@example.org", name=name, unsubscribe_url=f"https://x/u/{k}"))
        for k, name in enumerate(NAMES, start=1)
    ]
    result = sender_for(sendgrid_stub.url).send(make_batch(rendered, items))
    assert result.sent == list(range(1, len(NAMES) + 1))
    [request] = sendgrid_stub.requests
    personalizations = request.body["personalizations"]
    tokens = rendered.placeholders
    for (name, expected), personalization in zip(NAMES.items(), personalizations, strict=True):
        [to] = personalization["to"]
        assert to["name"] == expected, name
        if expected != name:  # a well-formed RFC 5322 quoted-string: it parses back to the name
            assert email.utils.getaddresses([f"{to['name']} <{to['email']}>"]) == [(name, to["email"])]
        assert personalization["substitutions"][tokens["name"]] == name  # the text keeps the name as it is


def test_the_from_name_goes_as_it_is(sendgrid_stub: SendgridStub, rendered: RenderedEmail) -> None:
    # SendGrid takes "," and ";" in from.name; quotes added there would show (see payload).
    email_ = replace(rendered, from_name="Statecraft Review, Weekly; Ed.")
    sender_for(sendgrid_stub.url).send(make_batch(email_, deliveries(1)))
    body = sendgrid_stub.requests[0].body
    assert body["from"] == {"email": "newsletter@news.example.org", "name": "Statecraft Review, Weekly; Ed."}
    assert body["reply_to"] == {"email": "editors@news.example.org"}  # an address, no name
