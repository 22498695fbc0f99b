"""Turning a fetched feed's bytes into feedparser entries (RSS 0.9x/1.0/2.0, Atom), after
an XML parser has refused entity declarations and external references in the prolog
(billion laughs, XXE); malformed, empty or non-feed documents become a ``FeedError`` naming
the source, while what feedparser can safely forgive (whitespace before the XML
declaration, a wrong or missing charset) is accepted and noted.
"""

from __future__ import annotations

import codecs
import io
import re
import time
import unicodedata
import xml.sax
from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat

import feedparser
from defusedxml import DefusedXmlException, EntitiesForbidden
from defusedxml.expatreader import DefusedExpatParser
from feedparser.datetimes.rfc822 import _parse_date_rfc822
from feedparser.datetimes.rfc822 import months as english_months
from lxml import etree

from newsletter.errors import FeedError
from newsletter.gather.fetch import FetchedFeed

MEDIA_NS = "http://search.yahoo.com/mrss/"
_ENTITY_DECL = re.compile(rb"<!ENTITY", re.IGNORECASE)
_UTF8_BOM = b"\xef\xbb\xbf"
_ITEM_TAGS = frozenset({"item", "entry"})
_ID_TAGS = frozenset({"id", "guid"})
_ATOM = "http://www.w3.org/2005/Atom"
_ATOM_CONTENT = f"{{{_ATOM}}}content"
_BODY_TAGS = frozenset({"{http://purl.org/rss/1.0/modules/content/}encoded", _ATOM_CONTENT})
_LIFTABLE_TYPES = frozenset({"", "html", "text", "text/html", "text/plain"})
# RSS 0.9x/2.0 items, RSS 1.0 items, Atom entries.
_ITEM_ELEMENTS = (
    "item",
    "{http://purl.org/rss/1.0/}item",
    f"{{{_ATOM}}}entry",
    "{http://my.netscape.com/rdf/simple/0.9/}item",
)


@dataclass(frozen=True)
class RawItem:
    """What feedparser loses (an item's id as written, its media:title for the image alt),
    and the full body when it was lifted out before feedparser saw the document."""

    guid: str | None = None
    media_title: str | None = None
    media_description: str | None = None
    content: str | None = None  # None: the body is in feedparser's entry as usual
    content_type: str = "html"  # "html" or "text"


@dataclass(frozen=True)
class ParsedFeed:
    source: str
    url: str
    feed: dict[str, Any]
    entries: list[dict[str, Any]]
    raw: list[RawItem] = field(default_factory=list)  # aligned with entries, or empty
    forgiven: list[str] = field(default_factory=list)  # what was accepted anyway, for --verbose


# RFC 822 dates written with another language's month names ("Seg, 24 Set 2018 10:00:00
# -0300"): Portuguese, Spanish, French, German, Italian, Dutch; accents removed.
_LOCAL_MONTHS = {
    "ene": 1,
    "gen": 1,
    "fev": 2,
    "maa": 3,
    "mrt": 3,
    "abr": 4,
    "avr": 4,
    "mag": 5,
    "mei": 5,
    "giu": 6,
    "juin": 6,
    "juil": 7,
    "lug": 7,
    "ago": 8,
    "aou": 8,
    "set": 9,
    "out": 10,
    "okt": 10,
    "ott": 10,
    "dez": 12,
    "dic": 12,
    "mai": 5,
}


def _localized_rfc822(text: str) -> time.struct_time | None:
    """feedparser date handler: an RFC 822 date whose month is not in English, translated
    and handed to feedparser's own RFC 822 parser; None for anything else."""
    parts = text.split()
    if len(parts) < 3:
        return None
    if not parts[0][:1].isdigit():  # a weekday name, in whatever language
        parts = parts[1:]
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    if parts[1].lower()[:3] in english_months:
        return None  # feedparser's own handlers read English
    word = unicodedata.normalize("NFKD", parts[1].lower().rstrip("."))
    word = "".join(c for c in word if c.isascii() and c.isalpha())
    month = _LOCAL_MONTHS.get(word[:4]) or _LOCAL_MONTHS.get(word[:3]) or english_months.get(word[:3])
    if month is None:
        return None
    english = [parts[0], list(english_months)[month - 1], *parts[2:]]
    parsed: time.struct_time | None = _parse_date_rfc822(" ".join(english))
    return parsed


feedparser.registerDateHandler(_localized_rfc822)


class _RootReached(Exception):
    """The prolog is over: no DOCTYPE can follow."""


class _PrologReader(DefusedExpatParser):  # type: ignore[misc]  # defusedxml ships no types
    """defusedxml's expat reader that never asks for an external DTD: an RSS 0.91
    ``<!DOCTYPE rss PUBLIC ...>`` is harmless while it is not fetched."""

    def reset(self) -> None:
        super().reset()
        self._parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)


class _StopAtRoot(xml.sax.handler.ContentHandler):
    def startElement(self, name: str, attrs: Any) -> None:
        raise _RootReached


def refuse_entities(body: bytes, source: str) -> None:
    """Refuse a document whose prolog declares entities or refers to external ones: no
    feed needs them, bombs do. expat reads the prolog (comments, processing instructions,
    the DOCTYPE) as XML, with defusedxml's handlers refusing every entity declaration, and
    stops at the root element, so no text search can be fooled by a comment."""
    parser = _PrologReader(forbid_dtd=False, forbid_entities=True, forbid_external=True)
    parser.setContentHandler(_StopAtRoot())
    parser.setErrorHandler(xml.sax.handler.ErrorHandler())
    try:
        parser.parse(io.BytesIO(body))
    except _RootReached:
        return
    except EntitiesForbidden:
        raise FeedError(
            f"{source}: refused: the feed declares XML entities in its DOCTYPE (a possible entity-expansion attack)"
        ) from None
    except DefusedXmlException:
        raise FeedError(f"{source}: refused: the feed refers to an external XML entity") from None
    except xml.sax.SAXParseException:
        # Not well-formed before its root: the parse below reports it, but a declaration
        # hidden behind the error is refused all the same.
        if _ENTITY_DECL.search(body[:65536]):
            raise FeedError(
                f"{source}: refused: the feed declares XML entities in its DOCTYPE (a possible entity-expansion attack)"
            ) from None


def forgive_leading_space(body: bytes) -> tuple[bytes, list[str]]:
    """``body`` without whitespace before its XML declaration (which XML forbids and
    feedparser recovers from), and a note saying so."""
    bom = _UTF8_BOM if body.startswith(_UTF8_BOM) else b""
    rest = body[len(bom) :]
    stripped = rest.lstrip(b" \t\r\n")
    if stripped is rest or len(stripped) == len(rest) or not stripped.startswith(b"<"):
        return body, []
    skipped = len(rest) - len(stripped)
    return bom + stripped, [
        f"{skipped} byte{'s' if skipped > 1 else ''} of whitespace before the XML declaration ignored"
    ]


def parse_feed(fetched: FetchedFeed) -> ParsedFeed:
    """Parse ``fetched`` into entries; a feed with no items is an error."""
    source = fetched.source
    body, forgiven = forgive_leading_space(fetched.body)
    refuse_entities(body, source)
    document = body
    content_type = _trusted_charset(body, fetched.content_type, forgiven)
    headers = {"content-type": content_type} if content_type else {}
    # feedparser spends most of its time copying big bodies around; lxml lifts them out
    # first when the document is well-formed and its encoding is beyond doubt.
    slim = _lift_bodies(body, content_type)
    if slim is not None:
        document, raw = slim
        mime = (content_type or "application/xml").split(";", 1)[0].strip()
        headers = {"content-type": f"{mime}; charset=utf-8"}
    try:
        # A stream, not bytes: feedparser treats a bytes/str argument as a URL or path.
        # Sanitizing and URL resolution happen in our own sanitizer, once, with nh3.
        parsed = feedparser.parse(
            io.BytesIO(document),
            response_headers=headers,
            sanitize_html=False,
            resolve_relative_uris=False,
        )
    except Exception as exc:  # feedparser raises assorted errors on hostile bytes
        raise FeedError(f"{source}: cannot be parsed ({type(exc).__name__}: {exc})") from None
    problem = parsed.get("bozo_exception")
    if isinstance(problem, xml.sax.SAXParseException):
        raise FeedError(
            f"{source}: malformed XML (line {problem.getLineNumber()}, "
            f"column {problem.getColumnNumber()}: {problem.getMessage()})"
        )
    entries = list(parsed.get("entries") or [])
    if not parsed.get("version") and not entries:
        served = f" (served as {fetched.content_type})" if fetched.content_type else ""
        raise FeedError(f"{source}: not an RSS or Atom feed{served}")
    if not entries:
        raise FeedError(f"{source}: the feed has no items")
    if slim is None or len(raw) != len(entries):
        raw = _raw_items(body, len(entries))
    if problem is not None:
        forgiven.append(" ".join(str(problem).split()) or type(problem).__name__)
    forgiven = [f"{source}: {note}" for note in forgiven]
    return ParsedFeed(source, fetched.url, dict(parsed.get("feed") or {}), entries, raw, forgiven)


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _charset(content_type: str | None) -> str | None:
    for param in (content_type or "").split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return None


_XML_ENCODING = re.compile(rb"""^<\?xml[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def _trusted_charset(body: bytes, content_type: str | None, notes: list[str]) -> str | None:
    """``content_type`` with its charset replaced by the document's own when the HTTP
    header is wrong: the bytes are valid UTF-8 as the document says (or implies by saying
    nothing), or they decode as it declares and not as served. Otherwise feedparser's
    rules stand."""
    served = _charset(content_type)
    if served is None or body.isascii() or body.startswith((b"\xff\xfe", b"\xfe\xff")):
        return content_type  # nothing to tell apart, or a BOM that decides
    match = _XML_ENCODING.match(body.removeprefix(_UTF8_BOM))
    declared = match.group(1).decode("ascii") if match else "utf-8"
    if _same_codec(served, declared):
        return content_type
    if not _decodes(body, declared):
        return content_type
    # Non-ASCII that is valid UTF-8 is UTF-8 by every odds; otherwise trust the document
    # only when the served charset cannot read the bytes at all.
    if not _same_codec(declared, "utf-8") and _decodes(body, served):
        return content_type
    notes.append(f"served as charset {served} but written in {declared}: read as {declared}")
    mime = (content_type or "").split(";", 1)[0].strip() or "application/xml"
    return f"{mime}; charset={declared}"


def _decodes(body: bytes, encoding: str) -> bool:
    try:
        body.decode(encoding)
    except (LookupError, UnicodeDecodeError):
        return False
    return True


def _same_codec(a: str, b: str) -> bool:
    try:
        return codecs.lookup(a).name == codecs.lookup(b).name
    except LookupError:
        return False


def _lift_bodies(body: bytes, content_type: str | None) -> tuple[bytes, list[RawItem]] | None:
    """The document without its full bodies (as UTF-8), and the bodies by item; None when
    feedparser had better see the document as it is (not well-formed, unclear encoding)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        root = etree.fromstring(body, parser=parser)
    except (etree.XMLSyntaxError, ValueError):
        return None
    declared = root.getroottree().docinfo.encoding or "utf-8"
    charset = _charset(content_type)
    if charset is not None and not _same_codec(charset, declared):
        return None  # HTTP and XML disagree: feedparser's rules decide
    items: list[RawItem] = []
    for element in root.iter(*_ITEM_ELEMENTS):
        guid, media_title, media_description = _ids(element)
        content: str | None = None
        kind = "html"
        for child in element:
            if child.tag not in _BODY_TAGS or len(child):
                continue  # XHTML content has child elements: feedparser handles it
            declared_type = (child.get("type") or "").lower()
            if child.tag == _ATOM_CONTENT and declared_type not in _LIFTABLE_TYPES:
                continue
            content = child.text or ""
            kind = "text" if declared_type in ("text", "text/plain") else "html"
            child.text = None
            break
        items.append(RawItem(guid, media_title, media_description, content, kind))
        # feedparser files a media:description as the item's summary, pushing the real
        # description aside; the image's description is kept above, for its alt text.
        for node in list(element.iter(f"{{{MEDIA_NS}}}description")):
            node.getparent().remove(node)
    slim = etree.tostring(root.getroottree(), encoding="utf-8", xml_declaration=True)
    return slim, items


def _ids(element: etree._Element) -> tuple[str | None, str | None, str | None]:
    """An item's guid as written, and its image's media:title and media:description."""
    guid = None
    for child in element:
        if _local(child.tag) in _ID_TAGS and child.text and child.text.strip():
            guid = child.text.strip()
    return guid, _first_text(element, "title"), _first_text(element, "description")


def _first_text(element: etree._Element, media_tag: str) -> str | None:
    for node in element.iter(f"{{{MEDIA_NS}}}{media_tag}"):
        if node.text and node.text.strip():
            return " ".join(node.text.split())
    return None


def _raw_items(body: bytes, expected: int) -> list[RawItem]:
    """Ids and media titles straight from the XML; empty when lxml disagrees on the items."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, recover=True)
    try:
        root = etree.fromstring(body, parser=parser)
    except (etree.XMLSyntaxError, ValueError):
        return []
    if root is None:
        return []
    items: list[RawItem] = []
    for element in root.iter():
        if _local(element.tag) not in _ITEM_TAGS:
            continue
        items.append(RawItem(*_ids(element)))
    return items if len(items) == expected else []
