"""The public URLs the newsletter prints in its emails and pages, all built from
``publication.public_url``, and the UTM tagging of links to the publication's own site.
One place, so the emails, the web app and the send job agree.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from newsletter.config import Publication, Utm
from newsletter.models import Recipient


def web_version(pub: Publication, slug: str) -> str:
    """The issue's "View in browser" page in the archive."""
    return f"{pub.public_url}/archive/{slug}"


def archive(pub: Publication) -> str:
    return f"{pub.public_url}/archive"


def subscribe(pub: Publication) -> str:
    return f"{pub.public_url}/subscribe"


def unsubscribe(pub: Publication, token: str) -> str:
    """The one-click unsubscribe URL carried in the footer and ``List-Unsubscribe``."""
    return f"{pub.public_url}/unsubscribe/{token}"


def preferences(pub: Publication, token: str) -> str:
    """The reader's preferences page (name, pause, export, erase), behind the same
    token as the unsubscribe link."""
    return f"{pub.public_url}/preferences/{token}"


def feed(pub: Publication) -> str:
    """The archive's Atom feed."""
    return f"{pub.public_url}/archive/feed.xml"


def recipient(pub: Publication, email: str, name: str, token: str, reader: str = "") -> Recipient:
    """A subscriber as a message's recipient: their address, name and personal links
    (``reader``: the signed ledger row of per_subscriber tracking)."""
    return Recipient(
        email=email,
        name=name,
        unsubscribe_url=unsubscribe(pub, token),
        preferences_url=preferences(pub, token),
        reader=reader,
    )


def confirm(pub: Publication, token: str) -> str:
    """The double opt-in confirmation link."""
    return f"{pub.public_url}/confirm/{token}"


class UtmTagger:
    """Adds utm_source/medium/campaign to links whose host is one of the own domains."""

    def __init__(self, utm: Utm, pub: Publication, slug: str, date: dt.date) -> None:
        self.enabled = utm.enabled
        hosts = utm.domains or [urlsplit(pub.website_url).hostname or ""]
        self.hosts = {h.lower() for h in hosts if h}
        self.params = {
            "utm_source": utm.source,
            "utm_medium": utm.medium,
            "utm_campaign": utm.campaign.format(slug=slug, date=date.isoformat()),
        }

    def __call__(self, url: str) -> str:
        if not self.enabled:
            return url
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not any(host == h or host.endswith("." + h) for h in self.hosts):
            return url
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in self.params]
        query.extend(self.params.items())
        return urlunsplit(parts._replace(query=urlencode(query)))
