"""From feedparser entries to ``FeedEntry``: what one article says about itself (title,
canonical absolute link, guid, time zone-aware publication time, author, section labels,
declared image with credit, alt text and size, summary and full-body HTML, and the base
for its relative URLs); and which items were left out, and why.
"""

from __future__ import annotations

import calendar
import datetime as dt
import html
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from newsletter.gather.parse import ParsedFeed, RawItem
from newsletter.sanitize import (
    cut_words,
    html_to_text,
    is_tracking_image,
    unescape_markup,
    upgrade_https,
)

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif")
_IMG_SRC = re.compile(r'<img\b(?:[^>"]|"[^"]*")*>')
_ATTR = re.compile(r'\s([a-z-]+)="([^"]*)"')


@dataclass(frozen=True)
class EntryRules:
    """What the configuration says about turning items into entries."""

    min_image_width: int = 300  # templates.min_image_width
    max_title_chars: int = 200  # sources.max_title_chars
    https_hosts: tuple[str, ...] = ()  # sources.https_domains


@dataclass(frozen=True)
class SkippedItem:
    """An item left out, and why (for --verbose and for the round-up's "none found")."""

    title: str
    reason: str
    categories: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FeedEntries:
    entries: list[FeedEntry]
    skipped: list[SkippedItem]


@dataclass(frozen=True)
class FeedImage:
    src: str
    alt: str = ""
    credit: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class FeedEntry:
    """One article as a feed describes it, before any choice is made."""

    source: str  # the feed it came from, for messages
    title: str
    link: str  # absolute http(s)
    guid: str | None
    published: dt.datetime | None  # tz-aware (UTC)
    author: str
    sections: tuple[str, ...]  # human labels, in feed order
    categories: frozenset[str]  # every term and label, lower-cased, for matching
    image: FeedImage | None  # from media:content / media:thumbnail / an enclosure
    summary_html: str
    content_html: str
    base_url: str  # what relative URLs in the HTML are relative to

    def in_any_section(self, names: set[str]) -> bool:
        """Whether a category's term or label is one of ``names`` (lower-cased)."""
        return not self.categories.isdisjoint(names)


def _is_http(url: str) -> bool:
    return urlsplit(url).scheme.lower() in ("http", "https") and bool(urlsplit(url).netloc)


def is_redirect_link(url: str) -> bool:
    """A feed service's click-counting redirect (FeedBurner ``~r``, Feedblitz ``~``) rather
    than the article's own address."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return (
        "/~r/" in parts.path
        or host == "feedproxy.google.com"
        or (host.endswith("feedblitz.com") and parts.path.startswith("/~/"))
    )


def _canonical_link(entry: dict[str, Any]) -> str:
    """``feedburner:origLink``, else the item's link or an ``atom:link rel="alternate"``
    that is not a redirect, else whatever link there is."""
    links = [str(entry.get("feedburner_origlink") or "").strip(), str(entry.get("link") or "").strip()]
    links += [
        str(link.get("href") or "").strip()
        for link in entry.get("links") or []
        if link.get("rel", "alternate") == "alternate"
    ]
    links = [link for link in links if link]
    return next((link for link in links if not is_redirect_link(link)), links[0] if links else "")


def _when(parsed: Any) -> dt.datetime | None:
    """feedparser's struct_time (already in UTC) as an aware datetime."""
    if not isinstance(parsed, time.struct_time):
        return None
    try:
        return dt.datetime.fromtimestamp(calendar.timegm(parsed), tz=dt.UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _int(value: Any) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def human_label(tag: dict[str, Any]) -> str:
    """A category's label for readers: its label if it has one, else its term, tidied."""
    label = " ".join(str(tag.get("label") or "").split())
    if label:
        return label
    term = " ".join(str(tag.get("term") or "").split())
    if term and term == term.lower() and "/" not in term and ":" not in term:
        # "ukraine war" reads as a slug; "Ukraine War" reads as a section.
        return " ".join(word[:1].upper() + word[1:] for word in term.split(" "))
    return term


def _sections(entry: dict[str, Any]) -> tuple[str, ...]:
    labels: list[str] = []
    for tag in entry.get("tags") or []:
        label = human_label(tag)
        if label and label.casefold() not in (seen.casefold() for seen in labels):
            labels.append(label)
    return tuple(labels)


def _terms(entry: dict[str, Any]) -> set[str]:
    """Every spelling of every category (term and label), lower-cased, for matching."""
    found: set[str] = set()
    for tag in entry.get("tags") or []:
        for key in ("term", "label"):
            value = " ".join(str(tag.get(key) or "").split())
            if value:
                found.add(value.casefold())
    return found


def _text(detail: Any, fallback: str) -> str:
    if isinstance(detail, dict) and detail.get("type") in ("text/html", "application/xhtml+xml"):
        return html_to_text(str(detail.get("value") or ""))
    return " ".join(fallback.split())


def _content_html(entry: dict[str, Any], raw: RawItem) -> tuple[str, str]:
    """The full body (content:encoded / Atom content) and its xml:base, if any."""
    if raw.content is not None:  # lifted out before feedparser; its element is still there
        details = entry.get("content") or [{}]
        base = str(details[0].get("base") or "")
        if raw.content_type == "text":
            return _plain_to_html(raw.content), base
        return raw.content, base
    for content in entry.get("content") or []:
        value = str(content.get("value") or "")
        if value.strip():
            if content.get("type") == "text/plain":
                return _plain_to_html(value), str(content.get("base") or "")
            return value, str(content.get("base") or "")
    return "", ""


def _plain_to_html(text: str) -> str:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)


def _summary_html(entry: dict[str, Any]) -> str:
    detail = entry.get("summary_detail") or {}
    value = str(entry.get("summary") or "")
    if detail.get("type") == "text/plain":
        return _plain_to_html(value)
    return value


def _alt(title: str, *candidates: str | None) -> str:
    """The first description that says something the title does not; "" (decorative)."""
    for text in candidates:
        text = " ".join((text or "").split())
        if text and text.casefold() != title.casefold():
            return text
    return ""


def _media_image(entry: dict[str, Any], base: str, raw: RawItem, title: str, rules: EntryRules) -> FeedImage | None:
    """The item's declared image (media:content, media:thumbnail, an image enclosure), the
    widest first; never a share button or beacon, nor narrower than the rules allow."""
    credits = entry.get("media_credit") or []
    credit = next((" ".join(str(c.get("content") or "").split()) for c in credits if c.get("content")), None)
    candidates: list[dict[str, Any]] = []
    for media in entry.get("media_content") or []:
        kind = str(media.get("medium") or "")
        mime = str(media.get("type") or "")
        url = str(media.get("url") or "")
        if (
            kind == "image"
            or mime.startswith("image/")
            or (not kind and not mime and urlsplit(url).path.lower().endswith(_IMAGE_EXTENSIONS))
        ):
            candidates.append(media)
    candidates.extend(entry.get("media_thumbnail") or [])
    for link in entry.get("links") or []:
        if link.get("rel") == "enclosure" and str(link.get("type") or "").startswith("image/"):
            candidates.append({"url": link.get("href")})
    # Widest first; those without a declared width keep the feed's order after them.
    candidates.sort(key=lambda media: -(_int(media.get("width")) or 0))
    alt = _alt(title, raw.media_title, raw.media_description)
    for media in candidates:
        src = urljoin(base, str(media.get("url") or "").strip()) if media.get("url") else ""
        width = _int(media.get("width"))
        if not _is_http(src) or is_tracking_image(src):
            continue
        if width is not None and width < rules.min_image_width:
            continue
        return FeedImage(upgrade_https(src, rules.https_hosts), alt, credit, width, _int(media.get("height")))
    return None


def first_real_image(clean_html: str, title: str, min_width: int = 0) -> FeedImage | None:
    """The first image in *sanitized* HTML (pixels, share buttons and hidden images are
    gone) that is not declared narrower than ``min_width``."""
    for match in _IMG_SRC.finditer(clean_html):
        attrs = dict(_ATTR.findall(match.group(0)))
        src = html.unescape(attrs.get("src", ""))
        width = _int(attrs.get("width"))
        if not _is_http(src) or is_tracking_image(src):
            continue
        if width is not None and width < min_width:
            continue
        own_alt = html.unescape(attrs.get("alt", ""))
        return FeedImage(src, _alt(title, own_alt), None, width, _int(attrs.get("height")))
    return None


def extract_entries(feed: ParsedFeed, rules: EntryRules | None = None) -> list[FeedEntry]:
    """Every usable item of ``feed`` (see ``extract_feed``)."""
    return extract_feed(feed, rules).entries


def extract_feed(feed: ParsedFeed, rules: EntryRules | None = None) -> FeedEntries:
    """Every usable item of ``feed``, and the items left out: without a title, without an
    http(s) link, or with a date that cannot be read."""
    rules = rules or EntryRules()
    channel_link = str(feed.feed.get("link") or "")
    feed_base = channel_link if _is_http(channel_link) else (feed.url if _is_http(feed.url) else "")
    feed_date = _when(feed.feed.get("updated_parsed")) or _when(feed.feed.get("published_parsed"))
    entries: list[FeedEntry] = []
    skipped: list[SkippedItem] = []
    for index, entry in enumerate(feed.entries):
        raw = feed.raw[index] if feed.raw else RawItem()
        made = _entry(feed.source, entry, raw, feed_base, feed_date, rules)
        if isinstance(made, SkippedItem):
            skipped.append(made)
        else:
            entries.append(made)
    return FeedEntries(entries, skipped)


_DATE_KEYS = ("published", "updated", "created")


def _entry(
    source: str,
    entry: dict[str, Any],
    raw: RawItem,
    feed_base: str,
    feed_date: dt.datetime | None,
    rules: EntryRules,
) -> FeedEntry | SkippedItem:
    title = _text(entry.get("title_detail"), str(entry.get("title") or ""))
    title = cut_words(title, len(title), rules.max_title_chars)
    categories = frozenset(_terms(entry))
    xml_base = str((entry.get("title_detail") or {}).get("base") or "")
    base = xml_base if _is_http(xml_base) else feed_base
    link = _canonical_link(entry)
    # feedparser offers a permalink guid as the link: it is used only when absolute.
    from_guid = bool(entry.get("guidislink")) and link == str(entry.get("id") or "").strip()
    if link and not from_guid:
        link = urljoin(base, link).replace(" ", "%20")
    if not title:
        return SkippedItem(f"item {(len(link) and link) or '(untitled)'}", "it has no title", categories)
    if not _is_http(link) or any(c.isspace() for c in link):
        return SkippedItem(title, "it has no usable link (no http or https address)", categories)
    link = upgrade_https(link, rules.https_hosts)
    guid = raw.guid or (str(entry.get("id")) if entry.get("id") else None)
    dates = [_when(entry.get(f"{key}_parsed")) for key in _DATE_KEYS]
    written = [str(entry.get(key)) for key in _DATE_KEYS if entry.get(key)]
    if written and not any(dates):
        return SkippedItem(title, f"its date {written[0]!r} cannot be read", categories)
    # Fallback: an item without a date of its own was current when the feed was updated.
    published = next((when for when in dates if when is not None), feed_date)
    author = str(entry.get("author") or "")
    if not author:
        names = [str(a.get("name") or "") for a in entry.get("authors") or []]
        author = ", ".join(n for n in names if n)
    content_html, content_base = _content_html(entry, raw)
    # Relative URLs in the body: xml:base if the feed set one, else the article itself.
    html_base = content_base if _is_http(content_base) else (xml_base if _is_http(xml_base) else link)
    return FeedEntry(
        source=source,
        title=title,
        link=link,
        guid=guid,
        published=published,
        author=" ".join(author.split()),
        sections=_sections(entry),
        categories=categories,
        image=_media_image(entry, html_base, raw, title, rules),
        summary_html=unescape_markup(_summary_html(entry)),
        content_html=unescape_markup(content_html),
        base_url=html_base,
    )
