"""Delivery status notifications as mail servers write them (RFC 3464: multipart/report
with a human part, a message/delivery-status part and the returned headers), plus the
messages a bounce mailbox also gets: a DSN whose MIME structure was mangled on the way,
a qmail-style bounce with no report part, and an out-of-office auto-reply."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

MTA = "mx.example.net"


def _headers_of(original: bytes) -> str:
    head = original.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return head.decode("utf-8", "replace") + "\n"


def dsn(
    original: bytes,
    *,
    envelope_to: str,
    recipient: str,
    status: str = "5.1.1",
    action: str = "failed",
    diagnostic: str | None = None,
    at: dt.datetime | None = None,
    message_id: str | None = None,
) -> bytes:
    """A DSN for ``original`` (the bytes the server received), as a postfix-like MTA
    sends it back to the envelope sender ``envelope_to``."""
    at = at or dt.datetime.now(dt.UTC)
    diagnostic = diagnostic or (
        f"smtp; 550 {status} <{recipient}>: Recipient address rejected: User unknown"
        if status.startswith("5")
        else f"smtp; 452 {status} <{recipient}>: Mailbox full"
    )
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"MAILER-DAEMON@{MTA} (Mail Delivery System)"
    msg["To"] = envelope_to
    msg["Delivered-To"] = envelope_to
    msg["Subject"] = (
        "Undelivered Mail Returned to Sender" if action == "failed" else "Delayed Mail (still being retried)"
    )
    msg["Date"] = format_datetime(at)
    msg["Message-ID"] = message_id or make_msgid(domain=MTA)
    msg["Auto-Submitted"] = "auto-replied"
    msg["MIME-Version"] = "1.0"
    human = EmailMessage()
    human.set_content(
        f"This is the mail system at host {MTA}.\n\nI'm sorry to have to inform you that your message could\n"
        f"not be delivered to one or more recipients.\n\n<{recipient}>: {diagnostic}\n"
    )
    report = (
        f"Reporting-MTA: dns; {MTA}\nArrival-Date: {format_datetime(at)}\n\n"
        f"Final-Recipient: rfc822; {recipient}\nOriginal-Recipient: rfc822;{recipient}\n"
        f"Action: {action}\nStatus: {status}\nRemote-MTA: dns; mailbox.example.net\n"
        f"Diagnostic-Code: {diagnostic}\nLast-Attempt-Date: {format_datetime(at)}\n"
    )
    boundary = "dsn-boundary-1"
    body = (
        f"This is a MIME-encapsulated message.\n\n--{boundary}\n"
        f"Content-Description: Notification\nContent-Type: text/plain; charset=us-ascii\n\n"
        f"{human.get_content()}\n--{boundary}\n"
        f"Content-Description: Delivery report\nContent-Type: message/delivery-status\n\n{report}\n"
        f"--{boundary}\nContent-Description: Undelivered Message Headers\nContent-Type: text/rfc822-headers\n\n"
        f"{_headers_of(original)}\n--{boundary}--\n"
    )
    head = "".join(f"{k}: {v}\n" for k, v in msg.items())
    head += f'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="{boundary}"\n'
    return (head + "\n" + body).replace("\n", "\r\n").encode("utf-8")


def mangled(original: bytes, *, envelope_to: str, recipient: str, status: str = "5.1.1") -> bytes:
    """A DSN a relay flattened: its multipart/report header lost (the whole thing is one
    text/plain body now) and the returned headers cut off."""
    whole = dsn(original, envelope_to=envelope_to, recipient=recipient, status=status).decode("utf-8")
    head, body = whole.split("\r\n\r\n", 1)
    head = "\r\n".join(line for line in head.split("\r\n") if not line.startswith(("Content-Type", "\tboundary")))
    body = body.split("Content-Description: Undelivered Message Headers", 1)[0]
    return (head + "\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + body).encode("utf-8")


def qmail_bounce(*, envelope_to: str, recipient: str) -> bytes:
    """A bounce with no report part, in qmail's words (flufl.bounce's detectors read it)."""
    text = (
        f"From: MAILER-DAEMON@{MTA}\r\nTo: {envelope_to}\r\nDelivered-To: {envelope_to}\r\n"
        f"Subject: failure notice\r\nDate: {format_datetime(dt.datetime.now(dt.UTC))}\r\n"
        f"Message-ID: {make_msgid(domain=MTA)}\r\n\r\n"
        f"Hi. This is the qmail-send program at {MTA}.\r\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        f"<{recipient}>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
        "--- Below this line is a copy of the message.\r\n\r\n"
    )
    return text.encode("utf-8")


def auto_reply(original: bytes, *, envelope_to: str) -> bytes:
    """An out-of-office reply (to the Return-Path, as some auto-responders do)."""
    sent = email.message_from_bytes(original)
    msg = EmailMessage()
    msg["From"] = str(sent["To"])
    msg["To"] = envelope_to
    msg["Subject"] = f"Out of office: {sent['Subject']}"
    msg["Auto-Submitted"] = "auto-replied"
    msg["In-Reply-To"] = str(sent["Message-ID"])
    msg["Message-ID"] = make_msgid(domain="example.net")
    msg["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    msg.set_content("I am away until Monday with no access to email.\n")
    return msg.as_bytes(policy=email.policy.SMTP)
