"""The fast per-recipient MIME bytes say exactly what ``render.personalize`` says, for
plain recipients (the fast path) and unusual ones (the fallback)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
from dataclasses import replace

import pytest

from newsletter import render
from newsletter.config import Settings
from newsletter.errors import HeaderError
from newsletter.models import Recipient
from newsletter.render import RenderedEmail
from newsletter.senders.mime import MessageTemplate
from tests.conftest import VICTIM, assert_only_templates_personalize, forged_placeholder_issue

NOW = dt.datetime(2024, 10, 25, 21, 0, tzinfo=dt.UTC)
URL = "https://news.example.org/unsubscribe/tok"

RECIPIENTS = [
    Recipient("reader@example.net", "Reader", URL),
    Recipient("reader@example.net", "", URL),
    Recipient("o'neil+news@example.net", 'Ann "The" <O\'Neil>, & co', URL + "?a=1&b=2"),
    Recipient("first.last@sub.example.net", "Dr. J. Smith (ret.)", URL),
    Recipient("zoë@example.net", "Zoë", URL),  # non-ASCII local part: fallback
    Recipient("reader@bücher.example", "Reader", URL),  # IDN: fallback
    Recipient("reader@example.net", "Jürgen Müller", URL),  # non-ASCII name: fallback
    Recipient("reader@example.net", "x" * 1200, URL),  # would fold: fallback
    Recipient("reader@example.net", "Reader", URL + "/" + "y" * 1000),  # long line: fallback
]


def parsed(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


@pytest.mark.parametrize("linesep", ["\n", "\r\n"])
@pytest.mark.parametrize("recipient", RECIPIENTS, ids=range(len(RECIPIENTS)))
def test_same_message_as_personalize(recipient: Recipient, linesep: str, rendered: RenderedEmail) -> None:
    email_ = replace(rendered, unsubscribe_mailto="unsubscribe@news.example.org")
    template = MessageTemplate(email_, linesep=linesep)
    fast = template.render(recipient, NOW)
    slow = render.personalize(email_, recipient, NOW).as_bytes(policy=render.email_policy.clone(linesep=linesep))
    a, b = parsed(fast), parsed(slow)
    assert list(a.keys()) == list(b.keys())
    for key in b:
        if key not in ("Message-ID", "Content-Type"):  # unique per message
            assert str(a[key]) == str(b[key]), key
    assert a.get_content_type() == "multipart/alternative"
    parts_a, parts_b = list(a.iter_parts()), list(b.iter_parts())
    assert [p.get_content_type() for p in parts_a] == ["text/plain", "text/html"]
    for pa, pb in zip(parts_a, parts_b, strict=True):
        assert pa.get_content() == pb.get_content()
        assert pa["Content-Transfer-Encoding"] == pb["Content-Transfer-Encoding"]
    if linesep == "\r\n":
        assert b"\n" not in fast.replace(b"\r\n", b"")
    # No line longer than SMTP allows, unless personalize itself writes one (an unbreakable
    # 1200-character name).
    longest = max(len(line) for line in fast.split(linesep.encode()))
    assert longest <= max(998, *(len(line) for line in slow.split(linesep.encode())))


def test_placeholders_are_replaced_with_escaping(rendered: RenderedEmail) -> None:
    recipient = Recipient("a&b@example.net", "<Ann & Bob>", URL)
    html = parsed(MessageTemplate(rendered).render(recipient)).get_body(("html",))
    assert html is not None
    content = html.get_content()
    assert "%%" not in content
    assert f'href="{URL}"' in content


@pytest.mark.parametrize("linesep", ["\n", "\r\n"])
def test_placeholder_lookalikes_in_content_arrive_literally(settings: Settings, linesep: str) -> None:
    email_ = render.build_issue(forged_placeholder_issue(), settings).email
    msg = parsed(MessageTemplate(email_, linesep=linesep).render(VICTIM))
    html, text = msg.get_body(("html",)), msg.get_body(("plain",))
    assert html is not None and text is not None
    assert_only_templates_personalize(msg["Subject"], html.get_content(), text.get_content())


def test_header_injection_raises_like_personalize(rendered: RenderedEmail) -> None:
    with pytest.raises(HeaderError):
        MessageTemplate(rendered).render(Recipient("x@example.net", "A\nBcc: b@example.net", URL))
    with pytest.raises(HeaderError):
        MessageTemplate(rendered).render(Recipient("x@example.net", "A", URL + "\r\nBcc: b@x"))


def test_each_message_has_its_own_id(rendered: RenderedEmail) -> None:
    template = MessageTemplate(rendered)
    ids = {parsed(template.render(Recipient(f"r{n}@example.net", "", URL)))["Message-ID"] for n in range(20)}
    assert len(ids) == 20


@pytest.mark.parametrize(
    "recipient",
    [
        Recipient("x@example.net\n", "A", URL),  # "$" in a pattern used with match() allows a final newline
        Recipient("x@example.net", "A\n", URL),
        Recipient("x@example.net", "A", URL + "\n"),
    ],
    ids=["email", "name", "unsubscribe-url"],
)
def test_a_final_newline_never_takes_the_fast_path(rendered: RenderedEmail, recipient: Recipient) -> None:
    with pytest.raises(HeaderError):
        MessageTemplate(rendered).render(recipient)


@pytest.mark.parametrize("path", ["fast", "personalize"])
def test_a_name_with_commas_semicolons_and_quotes_is_quoted_in_to(rendered: RenderedEmail, path: str) -> None:
    name = 'Lovelace, Ada; "the Countess"'
    recipient = Recipient("ada@example.net", name, URL)
    if path == "fast":
        data = MessageTemplate(rendered).render(recipient, NOW)
    else:
        data = render.personalize(rendered, recipient, NOW).as_bytes(policy=render.email_policy)
    [to] = [line for line in data.split(b"\n") if line.startswith(b"To:")]
    assert to == b'To: "Lovelace, Ada; \\"the Countess\\"" <ada@example.net>'
    assert email.utils.getaddresses([to.decode("ascii")[3:]]) == [(name, "ada@example.net")]
