"""The outbox backend: one .eml per recipient that parses back with the right headers
and substituted placeholders; reruns overwrite; bad addresses are rejected."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from newsletter.config import Settings
from newsletter.errors import PermanentDeliveryError
from newsletter.models import Recipient
from newsletter.render import RenderedEmail
from newsletter.senders import make_sender
from newsletter.senders.base import Delivery
from newsletter.senders.outbox import OutboxSender
from tests.senders.conftest import deliveries, make_batch


def parse(path: Path) -> email.message.EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def test_one_eml_per_recipient(tmp_path: Path, rendered: RenderedEmail) -> None:
    sender = OutboxSender(tmp_path / "outbox")
    items = [
        *deliveries(3),
        Delivery(
            key=4,
            recipient=Recipient(
                email="zoë@bücher.example", name="Zoë Ünal", unsubscribe_url="https://news.example.org/unsubscribe/t4"
            ),
        ),
    ]
    result = sender.send(make_batch(rendered, items))
    assert result.sent == [1, 2, 3, 4]
    folder = tmp_path / "outbox" / "2024-10-25"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "1-reader1@example.net.eml",
        "2-reader2@example.net.eml",
        "3-reader3@example.net.eml",
        "4-zo_@b_cher.example.eml",
    ]
    msg = parse(folder / "2-reader2@example.net.eml")
    assert msg["To"] == "Reader 2 <reader2@example.net>"
    assert msg["Subject"] == rendered.subject
    assert msg["List-Unsubscribe"] == "<https://news.example.org/unsubscribe/token-2>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    assert "https://news.example.org/unsubscribe/token-2" in text.get_content()
    assert 'href="https://news.example.org/unsubscribe/token-2"' in html.get_content()
    assert "%%" not in text.get_content() + html.get_content()
    # A non-ASCII name and an internationalized domain, through the slow path.
    zoe = parse(folder / "4-zo_@b_cher.example.eml")
    assert zoe["To"].addresses[0].display_name == "Zoë Ünal"
    assert zoe["To"].addresses[0].domain == "xn--bcher-kva.example"
    assert "https://news.example.org/unsubscribe/t4" in zoe["List-Unsubscribe"]
    assert not list(folder.glob(".*"))  # no temporary files left


def test_a_rerun_overwrites(tmp_path: Path, rendered: RenderedEmail) -> None:
    sender = OutboxSender(tmp_path)
    sender.send(make_batch(rendered, deliveries(2)))
    first = parse(tmp_path / "2024-10-25" / "1-reader1@example.net.eml")["Message-ID"]
    sender.send(make_batch(rendered, deliveries(2)))
    files = list((tmp_path / "2024-10-25").iterdir())
    assert len(files) == 2
    assert parse(tmp_path / "2024-10-25" / "1-reader1@example.net.eml")["Message-ID"] != first


def test_a_header_injection_is_rejected(tmp_path: Path, rendered: RenderedEmail) -> None:
    bad = Delivery(
        key=5,
        recipient=Recipient(
            email="x@example.net", name="Eve\r\nBcc: all@example.net", unsubscribe_url="https://news.example.org/u/5"
        ),
    )
    result = OutboxSender(tmp_path).send(make_batch(rendered, [*deliveries(1), bad]))
    assert result.sent == [1]
    assert "line break" in result.rejected[5]
    assert not list((tmp_path / "2024-10-25").glob("5-*"))


def test_an_issue_slug_cannot_escape_the_folder(tmp_path: Path, rendered: RenderedEmail) -> None:
    from newsletter.senders.base import Batch

    sender = OutboxSender(tmp_path / "outbox")
    sender.send(Batch(issue="../../etc", batch_id="b", email=rendered, deliveries=deliveries(1)))
    [written] = list((tmp_path / "outbox").rglob("*.eml"))
    assert (tmp_path / "outbox") in written.parents


def test_an_unwritable_folder_stops_the_send(tmp_path: Path, rendered: RenderedEmail) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermanentDeliveryError, match="outbox: cannot write"):
        OutboxSender(blocker).send(make_batch(rendered, deliveries(1)))


def test_make_sender_defaults_to_the_outbox(settings: Settings, project: Path, rendered: RenderedEmail) -> None:
    sender = make_sender(settings)
    assert sender.name == "outbox"
    assert sender.max_batch_size == settings.delivery.batch_size
    sender.send(make_batch(rendered, deliveries(1)))
    assert (project / "outbox" / "2024-10-25" / "1-reader1@example.net.eml").is_file()
