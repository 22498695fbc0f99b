"""The archive shared outside email: ``/archive/feed.xml`` (Atom, RFC 4287: the last
``FEED_SIZE`` sent issues with their web version's HTML) and the Open Graph and Twitter
card tags that make a shared archive link preview with its headline, preheader and lead
image. The feed is rebuilt only when an issue file or a template changes.
"""

from __future__ import annotations

import datetime as dt
import html as html_lib
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

import lxml.html
from fastapi import APIRouter, Request
from fastapi.responses import Response

from newsletter import issuefile, links
from newsletter.config import Publication, Settings
from newsletter.models import Issue
from newsletter.web.context import context
from newsletter.web.issues import BuildCache, templates_fingerprint, web_version

ATOM = "http://www.w3.org/2005/Atom"
ATOM_TYPE = "application/atom+xml"
FEED_SIZE = 20

router = APIRouter()


def entry_id(pub: Publication, issue: Issue) -> str:
    """A stable id for an issue (RFC 4151 tag URI): the public host, the issue's date and
    slug; it does not change when the issue is edited or the feed is rebuilt."""
    host = urlsplit(pub.public_url).hostname or "localhost"
    return f"tag:{host},{issue.date.isoformat()}:{issue.slug}"


def published(issue: Issue) -> dt.datetime:
    """When the issue went out: its ``sent_at``, else midnight UTC of its date."""
    if issue.sent_at is not None:
        return issue.sent_at if issue.sent_at.tzinfo else issue.sent_at.replace(tzinfo=dt.UTC)
    return dt.datetime.combine(issue.date, dt.time(), tzinfo=dt.UTC)


def lead_image(issue: Issue) -> tuple[str, str] | None:
    """The picture a shared link shows: the round-up's, else the first teaser's (src, alt)."""
    images = [issue.roundup.image if issue.roundup else None, *(t.image for t in issue.teasers)]
    found = next((image for image in images if image is not None), None)
    return (found.src, found.alt or "") if found else None


def description(issue: Issue) -> str:
    return issue.preheader or (issue.roundup.dek if issue.roundup else "") or issue.subject


def _body(document: str) -> str:
    """The web version's body, without its document wrapper (a feed entry is a fragment)."""
    body = lxml.html.document_fromstring(document).body
    return "".join([body.text or "", *(str(lxml.html.tostring(child, encoding="unicode")) for child in body)])


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, f"{{{ATOM}}}{tag}", attrs)
    element.text = text
    return element


def _link(parent: ET.Element, rel: str, href: str, kind: str) -> None:
    ET.SubElement(parent, f"{{{ATOM}}}link", {"rel": rel, "href": href, "type": kind})


def atom_feed(settings: Settings, issues: list[tuple[Issue, str]], now: dt.datetime) -> bytes:
    """The Atom document for ``issues`` (newest first, each with its web version's HTML)."""
    pub = settings.publication
    ET.register_namespace("", ATOM)
    feed = ET.Element(f"{{{ATOM}}}feed", {"xml:lang": pub.language})
    _text(feed, "id", f"{links.archive(pub)}/")
    _text(feed, "title", pub.name)
    if pub.tagline:
        _text(feed, "subtitle", pub.tagline)
    newest = max((published(issue) for issue, _ in issues), default=now)
    _text(feed, "updated", newest.isoformat())
    author = ET.SubElement(feed, f"{{{ATOM}}}author")
    _text(author, "name", pub.organisation or pub.name)
    _text(author, "uri", pub.website_url)
    _link(feed, "self", links.feed(pub), ATOM_TYPE)
    _link(feed, "alternate", links.archive(pub), "text/html")
    if pub.logo:
        _text(feed, "logo", pub.logo.src)
    for issue, document in issues:
        entry = ET.SubElement(feed, f"{{{ATOM}}}entry")
        _text(entry, "id", entry_id(pub, issue))
        _text(entry, "title", issue.subject)
        when = published(issue).isoformat()
        _text(entry, "published", when)
        _text(entry, "updated", when)
        _link(entry, "alternate", links.web_version(pub, issue.slug), "text/html")
        if summary := description(issue):
            _text(entry, "summary", summary)
        if issue.roundup and issue.roundup.author:
            byline = ET.SubElement(entry, f"{{{ATOM}}}author")
            _text(byline, "name", issue.roundup.author)
        _text(entry, "content", _body(document), type="html")
    xml: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + xml


class FeedCache:
    """The last feed built, kept until an issue file or a template changes."""

    def __init__(self) -> None:
        self._key: object = None
        self._feed = b""
        self._lock = threading.Lock()

    def get(self, settings: Settings, builds: BuildCache, now: dt.datetime) -> bytes:
        # The files' sizes and times, not their contents: reading and validating twenty
        # issue files to learn that nothing changed cost a second a request.
        key = (
            templates_fingerprint(settings),
            tuple((str(p), _stamp(p)) for p in sorted(settings.issues_dir.glob("*.yaml"))),
        )
        with self._lock:
            if key == self._key:
                return self._feed
        sent = issuefile.sent_issues(settings.issues_dir)[:FEED_SIZE]
        documents = [(issue, web_version(settings, builds.build(path, issue))) for path, issue in sent]
        feed = atom_feed(settings, documents, now)
        with self._lock:
            self._key, self._feed = key, feed
        return feed


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:  # removed since the listing
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


@router.get("/archive/feed.xml", summary="The archive as an Atom feed")
def archive_feed(request: Request) -> Response:
    ctx = context(request)
    body = request.app.state.feed.get(ctx.settings, request.app.state.builds, ctx.clock())
    return Response(body, media_type=f"{ATOM_TYPE}; charset=utf-8", headers={"Cache-Control": "public, max-age=300"})


def share_tags(settings: Settings, issue: Issue) -> str:
    """The ``<head>`` tags of an archive issue page: its feed, its canonical URL, and
    Open Graph and Twitter card meta (absolute URLs, as crawlers need)."""
    pub = settings.publication
    url = links.web_version(pub, issue.slug)
    tags = [
        ("link", {"rel": "alternate", "type": ATOM_TYPE, "title": pub.name, "href": links.feed(pub)}),
        ("link", {"rel": "canonical", "href": url}),
        ("meta", {"name": "description", "content": description(issue)}),
        ("meta", {"property": "og:type", "content": "article"}),
        ("meta", {"property": "og:site_name", "content": pub.name}),
        ("meta", {"property": "og:title", "content": issue.subject}),
        ("meta", {"property": "og:description", "content": description(issue)}),
        ("meta", {"property": "og:url", "content": url}),
        ("meta", {"property": "article:published_time", "content": published(issue).isoformat()}),
        ("meta", {"name": "twitter:title", "content": issue.subject}),
        ("meta", {"name": "twitter:description", "content": description(issue)}),
    ]
    image = lead_image(issue)
    if image:
        src, alt = image
        tags += [
            ("meta", {"property": "og:image", "content": src}),
            ("meta", {"property": "og:image:alt", "content": alt}),
            ("meta", {"name": "twitter:card", "content": "summary_large_image"}),
            ("meta", {"name": "twitter:image", "content": src}),
            ("meta", {"name": "twitter:image:alt", "content": alt}),
        ]
    else:
        tags.append(("meta", {"name": "twitter:card", "content": "summary"}))
    return "".join(
        f"<{tag} " + " ".join(f'{k}="{html_lib.escape(v, quote=True)}"' for k, v in attrs.items()) + ">"
        for tag, attrs in tags
    )


def with_share_tags(document: str, tags: str) -> str:
    """``document`` with ``tags`` at the end of its ``<head>``."""
    head_end = document.lower().find("</head>")
    if head_end < 0:
        return tags + document
    return document[:head_end] + tags + document[head_end:]
