"""MIME assembly: the .eml parses back into text and HTML parts with the right headers."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from email.message import EmailMessage

import pytest

from newsletter import issuefile, render
from newsletter.config import Settings
from newsletter.errors import HeaderError
from newsletter.models import Recipient

from .conftest import EXAMPLE_ISSUE

RECIPIENT = Recipient(
    email="zoe@example.org",
    name="Zoë Ångström",
    unsubscribe_url="https://news.example.org/newsletter/unsubscribe/tok123",
)


@pytest.fixture
def rendered(settings: Settings) -> render.RenderedEmail:
    return render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings).email


def _parse(msg: EmailMessage) -> EmailMessage:
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_multipart_alternative_text_then_html(rendered: render.RenderedEmail) -> None:
    msg = _parse(render.personalize(rendered, RECIPIENT))
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    text, html = parts[0].get_content(), parts[1].get_content()
    assert "Unsubscribe: https://news.example.org/newsletter/unsubscribe/tok123" in text
    assert 'href="https://news.example.org/newsletter/unsubscribe/tok123"' in html
    assert "«нейтралітет»" in html and "«нейтралітет»" in text


def test_headers(rendered: render.RenderedEmail) -> None:
    now = dt.datetime(2024, 10, 25, 21, 0, tzinfo=dt.UTC)
    raw = render.personalize(rendered, RECIPIENT, now=now).as_bytes()
    msg = _parse(render.personalize(rendered, RECIPIENT, now=now))
    assert msg["Subject"] == rendered.subject
    assert msg["From"] == "Statecraft Review <newsletter@news.example.org>"
    assert msg["To"] == "Zoë Ångström <zoe@example.org>"
    assert msg["Reply-To"] == "editors@news.example.org"
    assert msg["Date"] == "Fri, 25 Oct 2024 21:00:00 +0000"
    assert msg["Message-ID"].endswith("@news.example.org>")
    assert msg["List-Unsubscribe"] == "<https://news.example.org/newsletter/unsubscribe/tok123>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == '"Statecraft Review" <diplomacy-watch.news.example.org>'
    assert b"=?utf-8?" in raw  # non-ASCII display name encoded per RFC 2047
    for line in raw.split(b"\n"):
        assert len(line) <= 998


def test_non_ascii_subject_is_rfc2047_encoded(rendered: render.RenderedEmail) -> None:
    from dataclasses import replace

    raw = render.personalize(replace(rendered, subject="Diplomacy Watch: Kyïv — «нейтралітет»"), RECIPIENT).as_bytes()
    subject_line = next(l for l in raw.split(b"\n") if l.startswith(b"Subject:"))
    assert subject_line.isascii() and b"=?utf-8?" in subject_line
    assert _parse(render.personalize(replace(rendered, subject="Kyïv «x»"), RECIPIENT))["Subject"] == "Kyïv «x»"


def test_non_ascii_local_part_makes_an_smtputf8_message(rendered: render.RenderedEmail) -> None:
    from dataclasses import replace

    raw = render.personalize(rendered, replace(RECIPIENT, email="josé@münchen.example")).as_bytes()
    to_line = next(l for l in raw.split(b"\n") if l.startswith(b"To:"))
    assert to_line.decode("utf-8") == "To: Zoë Ångström <josé@xn--mnchen-3ya.example>"
    assert b"=?utf-8?q?jos" not in raw  # never an encoded word inside an address


def test_mailto_unsubscribe_is_optional_second_entry(rendered: render.RenderedEmail) -> None:
    from dataclasses import replace

    msg = render.personalize(replace(rendered, unsubscribe_mailto="leave@news.example.org"), RECIPIENT)
    assert msg["List-Unsubscribe"] == (
        "<https://news.example.org/newsletter/unsubscribe/tok123>, <mailto:leave@news.example.org?subject=unsubscribe>"
    )


def test_message_ids_are_unique(rendered: render.RenderedEmail) -> None:
    ids = {render.personalize(rendered, RECIPIENT)["Message-ID"] for _ in range(20)}
    assert len(ids) == 20


@pytest.mark.parametrize("field", ["subject", "name", "email"])
def test_newline_in_a_header_value_is_an_error(rendered: render.RenderedEmail, field: str) -> None:
    from dataclasses import replace

    evil = "x\r\nBcc: victim@example.net"
    if field == "subject":
        with pytest.raises(HeaderError, match="subject contains a line break"):
            render.personalize(replace(rendered, subject=evil), RECIPIENT)
    else:
        recipient = replace(RECIPIENT, **{field: evil if field == "name" else "a@b.c" + evil})
        with pytest.raises(HeaderError, match="line break"):
            render.personalize(rendered, recipient)
