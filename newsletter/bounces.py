"""Bounces for the SMTP backend: delivery status notifications (RFC 3464) read from the
bounce mailbox, matched to the delivery they are about by the signed token in their
envelope recipient (VERP) or in the returned message's Message-ID, and applied through
the webhook's own path (``store.events.apply_events``), so the status ladder, the
soft-bounce limit and the report are the same for SMTP as for SendGrid.

A ``failed`` notification is a bounce: hard for a 5.x.x status, soft for 4.x.x; a
``delayed`` one is recorded as ``deferred``. A message that is no notification (an
auto-reply), or names no delivery of ours, is left in the mailbox and reported.
"""

from __future__ import annotations

import datetime as dt
import email
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any, Final

from sqlalchemy import Engine, select

from newsletter.config import Settings
from newsletter.mailbox import Letter, Source
from newsletter.store import events
from newsletter.store.tables import deliveries, sends, subscribers
from newsletter.verp import DeliveryTokens

# Where a DSN names the address it was delivered to: the VERP address with our token.
_ENVELOPE_HEADERS: Final = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To", "Return-Path")
_STATUS: Final = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_FIELD: Final = re.compile(r"^([A-Za-z-]+):[ \t]*(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)
_SMTP_CODE: Final = re.compile(r"\b([45])\d\d\b")


class NotUsable(Exception):
    """A message the reader leaves in the mailbox, and why."""


@dataclass(frozen=True)
class Notice:
    """One recipient's block of a DSN: what happened to the message for that address."""

    action: str  # failed | delayed
    status: str | None  # e.g. "5.1.1"
    recipient: str | None  # Final-Recipient (or Original-Recipient)
    diagnostic: str | None  # Diagnostic-Code, e.g. "smtp; 550 5.1.1 user unknown"
    at: dt.datetime | None  # Last-Attempt-Date, else the DSN's Date

    @property
    def bounce_type(self) -> str:
        """``hard`` for a permanent failure (5.x.x), ``soft`` for a temporary one."""
        code = self.status or ""
        if not code and self.diagnostic:
            smtp = _SMTP_CODE.search(self.diagnostic)
            code = smtp.group(1) if smtp else ""
        return "soft" if code.startswith("4") or self.action == "delayed" else "hard"

    @property
    def reason(self) -> str:
        return " ".join(f"{self.status or ''} {self.diagnostic or self.action}".split())[:500]


@dataclass(frozen=True)
class Dsn:
    """A delivery status notification, parsed: its notices and the delivery it is about."""

    message_id: str
    notices: list[Notice]
    delivery_id: int | None


def _date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _address(value: str | None) -> str | None:
    """``rfc822; a@example.org`` -> ``a@example.org``."""
    if not value:
        return None
    address = value.split(";", 1)[-1].strip().strip("<>").strip()
    return address[:320] or None


def _one_line(value: str | None) -> str | None:
    return " ".join(value.split()) if value else None


def _notice(block: Message | dict[str, str], fallback_at: dt.datetime | None) -> Notice | None:
    action = (block.get("Action") or block.get("action") or "").strip().lower()
    action = "failed" if action.startswith(("fail", "error")) else action.split(" ")[0]
    if action not in ("failed", "delayed"):
        return None  # delivered, relayed, expanded: not a bounce
    status = _STATUS.search(str(block.get("Status") or block.get("status") or ""))
    return Notice(
        action=action,
        status=status.group(0) if status else None,
        recipient=_address(str(block.get("Final-Recipient") or block.get("Original-Recipient") or "") or None),
        diagnostic=(_one_line(str(block.get("Diagnostic-Code") or "")) or None),
        at=_date(str(block.get("Last-Attempt-Date") or "")) or fallback_at,
    )


def _delivery_status_blocks(parts: list[Message]) -> Iterator[Message]:
    """The per-recipient field blocks of every message/delivery-status part."""
    for part in parts:
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            # the first block holds the per-message fields
            yield from (block for block in payload[1:] if isinstance(block, Message))
        elif isinstance(payload, str):  # some MTAs send it as text: parse the blocks
            for text in re.split(r"\r?\n\r?\n", payload.strip())[1:]:
                yield email.message_from_string(text)


def _text_fields(text: str) -> list[dict[str, str]]:
    """A mangled DSN (its MIME structure lost) read as text: the blocks that hold an
    ``Action`` field, as field dicts."""
    blocks = []
    for chunk in re.split(r"\r?\n[ \t]*\r?\n", text):
        fields = {m.group(1).title(): " ".join(m.group(2).split()) for m in _FIELD.finditer(chunk)}
        if "Action" in fields:
            blocks.append(fields)
    return blocks


def _body_text(parts: list[Message]) -> str:
    """Every text part of ``parts``, decoded, one after another."""
    texts = []
    for part in parts:
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            texts.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
        elif isinstance(part.get_payload(), str):
            texts.append(str(part.get_payload()))
    return "\n\n".join(texts)


def _returned_message_ids(parts: list[Message]) -> list[str]:
    """The Message-ID of the message the DSN returns (message/rfc822 or its headers)."""
    found = []
    for part in parts:
        kind = part.get_content_type()
        if kind in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message) and inner.get("Message-ID"):
                found.append(str(inner["Message-ID"]))
        elif kind in ("text/rfc822-headers", "message/global-headers"):
            headers = email.message_from_string(_body_text([part]))
            if headers.get("Message-ID"):
                found.append(str(headers["Message-ID"]))
    return found


def _flufl_notices(msg: Message, text: str, at: dt.datetime | None) -> list[Notice]:
    """Notices for a bounce that is no RFC 3464 report (qmail, old Exim, some webmail),
    from flufl.bounce's detectors; the status is whatever code the text holds."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector that trips over a malformed message found nothing in it
        return []
    code = _STATUS.search(text)
    notices = []
    for addresses, action in ((permanent, "failed"), (temporary, "delayed")):
        for address in sorted(addresses):
            status = code.group(0) if code and code.group(1) == ("5" if action == "failed" else "4") else None
            notices.append(
                Notice(
                    action=action,
                    status=status or ("5.0.0" if action == "failed" else "4.0.0"),
                    recipient=address.decode("ascii", "replace"),
                    diagnostic=None,
                    at=at,
                )
            )
    return notices


def parse(raw: bytes, tokens: DeliveryTokens) -> Dsn:
    """``raw`` as a DSN; NotUsable when it is none (an auto-reply, a person's mail)."""
    msg = email.message_from_bytes(raw)
    at = _date(str(msg.get("Date") or ""))
    parts = list(msg.walk())
    notices = [n for n in (_notice(block, at) for block in _delivery_status_blocks(parts)) if n is not None]
    has_report = any(p.get_content_type() == "message/delivery-status" for p in parts)
    if not notices and not has_report:
        text = _body_text(parts)
        # No report part: a mangled report, or a non-standard bounce.
        notices = [n for n in (_notice(fields, at) for fields in _text_fields(text)) if n is not None]
        if not notices:
            notices = _flufl_notices(msg, text, at)
    if not notices:
        subject = _one_line(str(msg.get("Subject") or "")) or "(no subject)"
        auto = str(msg.get("Auto-Submitted") or "").lower()
        if has_report:
            kind = "a delivery report with no failed or delayed delivery"
        elif auto.startswith("auto-replied"):
            kind = "an automatic reply"
        else:
            kind = "no failed or delayed delivery in it"
        raise NotUsable(f"not a bounce: {kind} ({subject[:80]!r})")
    # The token: in the address the DSN came to (VERP), else the returned Message-ID.
    candidates = [str(v) for name in _ENVELOPE_HEADERS for v in (msg.get_all(name) or [])]
    candidates += _returned_message_ids(parts)
    delivery_id = next((d for d in map(tokens.delivery, candidates) if d is not None), None)
    message_id = str(msg.get("Message-ID") or "").strip() or hashlib.sha256(raw).hexdigest()
    return Dsn(message_id=message_id, notices=notices, delivery_id=delivery_id)


def event_id(dsn: Dsn, notice: Notice) -> str:
    """A stable id per notice: re-reading the same DSN records nothing new."""
    key = f"{dsn.message_id}|{notice.recipient or ''}|{notice.action}|{notice.status or ''}"
    return "dsn:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:40]


@dataclass(frozen=True)
class _Delivered:
    issue: str
    batch_id: str | None
    email: str | None


def _delivered(engine: Engine, delivery_ids: set[int]) -> dict[int, _Delivered]:
    """The deliveries of these ids that the database has, with their issue and address."""
    query = (
        select(deliveries.c.id, sends.c.issue, deliveries.c.batch_id, subscribers.c.email)
        .select_from(
            deliveries.join(sends, sends.c.id == deliveries.c.send_id).outerjoin(
                subscribers, subscribers.c.id == deliveries.c.subscriber_id
            )
        )
        .where(deliveries.c.id.in_(sorted(delivery_ids)))
    )
    with engine.connect() as conn:
        return {int(r.id): _Delivered(str(r.issue), r.batch_id, r.email) for r in conn.execute(query)}


def webhook_events(dsn: Dsn, delivered: _Delivered, delivery_id: int, received: dt.datetime) -> list[dict[str, Any]]:
    """The DSN's notices as the events SendGrid would have posted for them."""
    out = []
    for notice in dsn.notices:
        at = notice.at or received
        out.append(
            {
                "sg_event_id": event_id(dsn, notice),
                "event": "bounce" if notice.action == "failed" else "deferred",
                # SendGrid's words: type "bounce" is a hard bounce, "blocked" a soft one
                "type": "bounce" if notice.bounce_type == "hard" else "blocked",
                "email": delivered.email,
                "newsletter_issue": delivered.issue,
                "newsletter_batch": delivered.batch_id,
                "newsletter_delivery": str(delivery_id),
                "reason": notice.reason,
                "timestamp": at.timestamp(),
            }
        )
    return out


@dataclass
class FetchReport:
    """What one ``newsletter bounces fetch`` did."""

    source: str
    read: int = 0
    hard: int = 0  # notices read, recorded before or not
    soft: int = 0
    deferred: int = 0
    duplicates: int = 0  # notices recorded by an earlier fetch
    status_changes: dict[str, int] = field(default_factory=dict)
    left: list[tuple[str, str]] = field(default_factory=list)  # (message, why it was left in place)

    def summary(self) -> str:
        changes = ", ".join(f"{n:,} {status}" for status, n in sorted(self.status_changes.items())) or "none"
        return (
            f"{self.read:,} messages read: {self.hard:,} hard bounces, {self.soft:,} soft bounces, "
            f"{self.deferred:,} delays ({self.duplicates:,} of them recorded before), {len(self.left):,} left in "
            f"place; subscribers changed: {changes}"
        )


def _dsn_of(letter: Letter, tokens: DeliveryTokens) -> Dsn:
    """``letter`` as a DSN that names a delivery; NotUsable when it is left in place."""
    try:
        dsn = parse(letter.raw, tokens)
    except (ValueError, LookupError, UnicodeError) as exc:  # a message the email package chokes on
        raise NotUsable(f"cannot be parsed: {exc}") from None
    if dsn.delivery_id is None:
        raise NotUsable("a bounce that names no delivery of ours (no signed token in its address or Message-ID)")
    return dsn


BATCH: Final = 200  # messages looked up and applied together, in one transaction


def process(
    engine: Engine,
    source: Source,
    tokens: DeliveryTokens,
    *,
    soft: events.SoftBounces = events.SoftBounces(),
    now: dt.datetime | None = None,
) -> FetchReport:
    """Apply every unprocessed message of ``source``, ``BATCH`` at a time: each applied
    one is marked done after its events are committed (a crash re-reads it and records
    nothing twice), each unusable one is left in place and reported."""
    report = FetchReport(source=source.name)
    waiting: list[tuple[Letter, Dsn]] = []
    for letter in source.letters():
        report.read += 1
        try:
            waiting.append((letter, _dsn_of(letter, tokens)))
        except NotUsable as exc:
            report.left.append((letter.ref, str(exc)))
            source.skip(letter)
            continue
        if len(waiting) >= BATCH:
            _apply(engine, source, waiting, soft, now or dt.datetime.now(dt.UTC), report)
            waiting = []
    _apply(engine, source, waiting, soft, now or dt.datetime.now(dt.UTC), report)
    return report


def _apply(
    engine: Engine,
    source: Source,
    waiting: list[tuple[Letter, Dsn]],
    soft: events.SoftBounces,
    now: dt.datetime,
    report: FetchReport,
) -> None:
    if not waiting:
        return
    found = _delivered(engine, {dsn.delivery_id for _, dsn in waiting if dsn.delivery_id is not None})
    usable: list[tuple[Letter, Dsn]] = []
    raw_events: list[dict[str, Any]] = []
    for letter, dsn in waiting:
        delivered = found.get(dsn.delivery_id or 0)
        if delivered is None or dsn.delivery_id is None:
            report.left.append(
                (letter.ref, f"a bounce for delivery {dsn.delivery_id}, which this database does not have")
            )
            source.skip(letter)
            continue
        usable.append((letter, dsn))
        raw_events += webhook_events(dsn, delivered, dsn.delivery_id, now)
    if not usable:
        return
    applied = events.apply_events(engine, raw_events, now=now, soft_bounces=soft)
    report.duplicates += applied.duplicates
    for status, n in applied.status_changes.items():
        report.status_changes[status] = report.status_changes.get(status, 0) + n
    for letter, dsn in usable:
        for notice in dsn.notices:
            kind = "deferred" if notice.action == "delayed" else notice.bounce_type
            setattr(report, kind, getattr(report, kind) + 1)
        source.done(letter)


def open_source(settings: Settings) -> Source:
    """The configured bounce mailbox, opened; ConfigError when none is configured."""
    from newsletter.errors import ConfigError
    from newsletter.mailbox import ImapSource, open_path

    config = settings.bounces
    if config.imap is not None:
        return ImapSource(
            config.imap,
            settings.secret(config.imap.username_env, "the bounce mailbox's IMAP user name"),
            settings.secret(config.imap.password_env, "the bounce mailbox's IMAP password"),
            delete=config.delete_processed,
        )
    if config.path is not None:
        return open_path(config.path, delete=config.delete_processed)
    raise ConfigError(f"{settings.config_path}: no bounce mailbox: set bounces.imap or bounces.path")


def fetch(settings: Settings, engine: Engine, *, now: dt.datetime | None = None) -> FetchReport:
    """``newsletter bounces fetch`` and the hourly job: read the configured mailbox once."""
    config = settings.bounces
    source = open_source(settings)
    try:
        tokens = DeliveryTokens(settings.secret(config.signing_key_env, "the bounce tokens' signing key"))
        return process(
            engine, source, tokens, soft=events.SoftBounces(config.soft_limit, config.soft_window_days), now=now
        )
    finally:
        source.close()
