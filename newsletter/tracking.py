"""Tracking at send time, as ``tracking.clicks`` and ``tracking.opens`` choose: a sent
issue's links are recorded in the email's order with their labels (``tracked_links``);
links to the publication's unsubscribe, archive and preferences pages are never tracked.
SendGrid tracks itself (those links get ``clicktracking="off"``); for SMTP and the outbox
the tracked links are rewritten to the project's redirect ``/r/<link>`` and, when opens
are on, a pixel ``/o/<issue>.gif`` is added. With ``per_subscriber`` both carry a signed
reader token (the ledger row) filled in per recipient by the ``reader`` placeholder.

Tokens are ``<id>.<HMAC-SHA256>`` under the issue's own random key (``tracked_sends.key``):
only a link recorded for a sent issue redirects, and no id can be made up or altered.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import html as html_lib
import re
import secrets
from dataclasses import dataclass, replace
from typing import Final
from urllib.parse import urlsplit

from sqlalchemy import Engine, insert, select

from newsletter.config import Publication, Tracking
from newsletter.errors import NewsletterError
from newsletter.render import RenderedEmail
from newsletter.store.db import insert_ignoring_conflicts, write_transaction
from newsletter.store.tables import deliveries, sends, tracked_links, tracked_sends, webhook_events

# Paths under publication.public_url whose links are never tracked.
UNTRACKED_PATHS: Final = ("/unsubscribe", "/archive", "/preferences")
# Senders whose provider tracks opens and clicks itself.
PROVIDER_TRACKED: Final = frozenset({"sendgrid"})
LABEL_LENGTH: Final = 200
_ANCHOR: Final = re.compile(r'(<a\b[^>]*?\bhref=")([^"]*)(")', re.IGNORECASE)
_SIGNATURE_BYTES: Final = 16  # 128 bits
PIXEL: Final = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


class LinkNotTracked(NewsletterError):
    """A redirect or pixel token that names nothing sent, or whose signature is wrong."""

    status = 404


@dataclass(frozen=True)
class Link:
    """One tracked link of an email: its place among the tracked links, URL and label."""

    position: int
    url: str
    label: str


@dataclass(frozen=True)
class TrackedSend:
    """An issue's tracking as it was sent: its modes, its signing key, its links' ids."""

    id: int
    issue: str
    clicks: str
    opens: str
    key: str
    link_ids: dict[str, int]  # URL -> tracked_links.id


def is_untracked(url: str, pub: Publication) -> bool:
    """True for links that are never tracked: not http(s), or under public_url's
    unsubscribe, archive or preferences paths."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return True
    base = urlsplit(pub.public_url)
    if (parts.scheme, parts.netloc.lower()) != (base.scheme, base.netloc.lower()):
        return False
    path = parts.path[len(base.path.rstrip("/")) :] if parts.path.startswith(base.path.rstrip("/")) else ""
    return any(path == p or path.startswith(p + "/") for p in UNTRACKED_PATHS)


def email_links(html: str, pub: Publication, placeholders: tuple[str, ...] = ()) -> list[Link]:
    """The tracked links of an email in document order, each URL once, with the text of
    its first link (or the alt text of the image it wraps) as the label."""
    import lxml.html

    found: dict[str, Link] = {}
    for a in lxml.html.document_fromstring(html).iter("a"):
        url = (a.get("href") or "").strip()
        if not url or any(p in url for p in placeholders) or is_untracked(url, pub):
            continue
        alts = " ".join(str(img.get("alt") or "") for img in a.iter("img"))
        label = " ".join(a.text_content().split()) or " ".join(alts.split())
        if url not in found:
            found[url] = Link(len(found), url, label[:LABEL_LENGTH])
        elif not found[url].label and label:
            found[url] = replace(found[url], label=label[:LABEL_LENGTH])
    return list(found.values())


def sign(key: str, message: str) -> str:
    mac = hmac.new(key.encode("ascii"), message.encode("utf-8"), hashlib.sha256).digest()[:_SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def _token(key: str, kind: str, ident: int) -> str:
    return f"{ident}.{sign(key, f'{kind}:{ident}')}"


def _verified(key: str, kind: str, token: str) -> int | None:
    ident, _, signature = token.partition(".")
    if not ident.isdigit() or len(ident) > 18:
        return None
    return int(ident) if hmac.compare_digest(sign(key, f"{kind}:{int(ident)}"), signature) else None


def _ident(token: str) -> int | None:
    ident = token.partition(".")[0]
    return int(ident) if ident.isdigit() and len(ident) <= 18 else None


def link_token(tracked: TrackedSend, link_id: int) -> str:
    return _token(tracked.key, "link", link_id)


def open_token(tracked: TrackedSend) -> str:
    return _token(tracked.key, "open", tracked.id)


def reader_token(tracked: TrackedSend, delivery_id: int) -> str:
    """The per-recipient part of a per_subscriber URL: the ledger row, signed."""
    return _token(tracked.key, "reader", delivery_id)


def record_send(
    engine: Engine, issue: str, links: list[Link], tracking: Tracking, now: dt.datetime | None = None
) -> TrackedSend:
    """Record an issue's tracking and links once; a resumed send gets what the first
    run recorded (its modes and key), so the links already mailed keep working."""
    now = now or dt.datetime.now(dt.UTC)
    with write_transaction(engine) as conn:
        conn.execute(
            insert_ignoring_conflicts(conn, tracked_sends, "issue").values(
                issue=issue, clicks=tracking.clicks, opens=tracking.opens, key=secrets.token_hex(32), created_at=now
            )
        )
        row = conn.execute(select(tracked_sends).where(tracked_sends.c.issue == issue)).one()
        known = {
            r.url: int(r.id)
            for r in conn.execute(select(tracked_links.c.url, tracked_links.c.id).where(tracked_links.c.issue == issue))
        }
        fresh = [link for link in links if link.url not in known]
        if fresh:
            start = len(known)
            conn.execute(
                insert(tracked_links),
                [
                    {"issue": issue, "position": start + i, "url": link.url, "label": link.label}
                    for i, link in enumerate(fresh)
                ],
            )
            known = {
                r.url: int(r.id)
                for r in conn.execute(
                    select(tracked_links.c.url, tracked_links.c.id).where(tracked_links.c.issue == issue)
                )
            }
    return TrackedSend(int(row.id), issue, str(row.clicks), str(row.opens), str(row.key), known)


def prepare(email: RenderedEmail, tracked: TrackedSend, pub: Publication, sender_name: str) -> RenderedEmail:
    """The email as it goes out through ``sender_name``: for SendGrid the untracked links
    marked ``clicktracking="off"``; for the others, tracked links through the redirect
    and the open pixel, as the issue's recorded modes say."""
    reader = email.placeholders["reader"]

    def suffix(mode: str) -> str:
        return f"/{reader}" if mode == "per_subscriber" else ""

    def sub(m: re.Match[str]) -> str:
        url = html_lib.unescape(m.group(2))
        if sender_name in PROVIDER_TRACKED:
            if tracked.clicks == "off" or not is_untracked(url, pub) or url.startswith("mailto:"):
                return m.group(0)
            return m.group(1).replace("<a ", '<a clicktracking="off" ', 1) + m.group(2) + m.group(3)
        link_id = tracked.link_ids.get(url)
        if tracked.clicks == "off" or link_id is None:
            return m.group(0)
        target = f"{pub.public_url}/r/{link_token(tracked, link_id)}{suffix(tracked.clicks)}"
        return m.group(1) + html_lib.escape(target, quote=True) + m.group(3)

    html = _ANCHOR.sub(sub, email.html)
    if sender_name not in PROVIDER_TRACKED and tracked.opens != "off":
        pixel = (
            f'<img src="{pub.public_url}/o/{open_token(tracked)}{suffix(tracked.opens)}.gif" '
            'width="1" height="1" alt="" style="display:block;border:0;width:1px;height:1px" />'
        )
        html = html.replace("</body>", pixel + "</body>", 1) if "</body>" in html else html + pixel
    return replace(email, html=html)


# --- the redirect and the pixel -------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """What a redirect or pixel request proved: the issue, the URL to go to (clicks),
    and the ledger row when the issue tracks per subscriber."""

    issue: str
    url: str | None
    delivery_id: int | None


def _send_for(engine: Engine, send_id: int) -> TrackedSend | None:
    with engine.connect() as conn:
        row = conn.execute(select(tracked_sends).where(tracked_sends.c.id == send_id)).first()
    return None if row is None else TrackedSend(int(row.id), row.issue, row.clicks, row.opens, row.key, {})


def _reader(engine: Engine, tracked: TrackedSend, mode: str, reader: str | None) -> int | None:
    if reader is None:
        return None
    delivery_id = _verified(tracked.key, "reader", reader)
    if delivery_id is None:
        raise LinkNotTracked("bad reader signature")
    return delivery_id if mode == "per_subscriber" else None


def click(engine: Engine, token: str, reader: str | None = None) -> Hit:
    """The link behind a redirect token, if it is a link of a sent issue and both
    signatures hold; raises LinkNotTracked otherwise."""
    link_id = _ident(token)
    if link_id is None:
        raise LinkNotTracked("malformed link token")
    with engine.connect() as conn:
        link = conn.execute(select(tracked_links).where(tracked_links.c.id == link_id)).first()
        send_id = (
            None
            if link is None
            else conn.execute(select(tracked_sends.c.id).where(tracked_sends.c.issue == link.issue)).scalar()
        )
    tracked = _send_for(engine, int(send_id)) if send_id is not None else None
    if link is None or tracked is None or _verified(tracked.key, "link", token) != link_id:
        raise LinkNotTracked("no such link, or a bad signature")
    return Hit(tracked.issue, str(link.url), _reader(engine, tracked, tracked.clicks, reader))


def opened(engine: Engine, token: str, reader: str | None = None) -> Hit:
    """The issue behind a pixel token (see ``click``)."""
    send_id = _ident(token)
    tracked = _send_for(engine, send_id) if send_id is not None else None
    if tracked is None or _verified(tracked.key, "open", token) != send_id:
        raise LinkNotTracked("no such issue, or a bad signature")
    return Hit(tracked.issue, None, _reader(engine, tracked, tracked.opens, reader))


def record_hit(engine: Engine, hit: Hit, now: dt.datetime) -> None:
    """Keep a click or an open as an event like SendGrid's (``webhook_events``): with
    the ledger row and subscriber only when the hit carries a reader (per_subscriber)
    and that row belongs to the issue's send."""
    subscriber_id: int | None = None
    delivery_id = hit.delivery_id
    with write_transaction(engine) as conn:
        if delivery_id is not None:
            subscriber_id = conn.execute(
                select(deliveries.c.subscriber_id)
                .join(sends, sends.c.id == deliveries.c.send_id)
                .where(deliveries.c.id == delivery_id, sends.c.issue == hit.issue)
            ).scalar()
            if subscriber_id is None:
                delivery_id = None
        conn.execute(
            insert(webhook_events).values(
                sg_event_id=f"own-{secrets.token_hex(16)}",
                event="click" if hit.url is not None else "open",
                issue=hit.issue,
                subscriber_id=subscriber_id,
                delivery_id=delivery_id,
                reason=hit.url,
                occurred_at=now,
                received_at=now,
            )
        )
