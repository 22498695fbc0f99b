"""Parsing what the server sends: RSS and Atom in encodings other than UTF-8, wrong
content types, and the documents that must be refused (entity bombs, malformed XML,
empty feeds, HTML pages)."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.config import Fetching
from newsletter.errors import FeedError
from newsletter.gather.extract import extract_entries
from newsletter.gather.fetch import FeedFetcher
from newsletter.gather.parse import ParsedFeed, parse_feed

from .conftest import FeedServer
from .feedmaker import rss, rss_item

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE rss [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<rss version="2.0"><channel><title>&lol4;</title>
<item><title>&lol4;</title><link>https://news.example.org/a</link></item></channel></rss>"""


def fetch_and_parse(server: FeedServer, tmp_path: Path, path: str, body: bytes | str, **route: object) -> ParsedFeed:
    url = server.add(path, body, **route)
    with FeedFetcher(Fetching(cache_dir=tmp_path / "cache"), "test") as f:
        return parse_feed(f.fetch(url))


def test_the_shared_fixtures_parse(
    feed_server: FeedServer, tmp_path: Path, roundup_xml: bytes, latest_xml: bytes
) -> None:
    rss_feed = fetch_and_parse(feed_server, tmp_path, "/r.rss", roundup_xml)
    atom_feed = fetch_and_parse(feed_server, tmp_path, "/l.atom", latest_xml, content_type="application/atom+xml")
    assert len(rss_feed.entries) == 3 and len(atom_feed.entries) == 7
    assert [r.guid for r in atom_feed.raw][:2] == ["sr-2669474413", "sr-2669474420"]


def test_windows_1252_declared_in_the_xml(feed_server: FeedServer, tmp_path: Path) -> None:
    body = rss(
        rss_item("\u201cCaf\u00e9\u201d diplomacy \u2013 a primer", "https://news.example.org/cafe"),
        encoding="windows-1252",
    ).encode("cp1252")
    assert b"\x93Caf\xe9\x94" in body
    parsed = fetch_and_parse(feed_server, tmp_path, "/cp1252.rss", body, content_type="application/rss+xml")
    [entry] = extract_entries(parsed)
    assert entry.title == "\u201cCaf\u00e9\u201d diplomacy \u2013 a primer"


def test_iso_8859_1_declared_only_by_the_http_charset(feed_server: FeedServer, tmp_path: Path) -> None:
    body = rss(rss_item("Bient\u00f4t \u00e0 Gen\u00e8ve", "https://news.example.org/geneve"), declare=False).encode(
        "latin-1"
    )
    parsed = fetch_and_parse(
        feed_server, tmp_path, "/latin1.rss", body, content_type="application/xml; charset=ISO-8859-1"
    )
    assert extract_entries(parsed)[0].title == "Bient\u00f4t \u00e0 Gen\u00e8ve"


def test_a_feed_served_as_text_html_still_parses(feed_server: FeedServer, tmp_path: Path, roundup_xml: bytes) -> None:
    parsed = fetch_and_parse(feed_server, tmp_path, "/r.rss", roundup_xml, content_type="text/html; charset=utf-8")
    assert len(parsed.entries) == 3


def test_an_html_page_served_as_a_feed_is_refused(feed_server: FeedServer, tmp_path: Path) -> None:
    page = "<!DOCTYPE html><html><head><title>Home</title></head><body><p>Welcome</p></body></html>"
    with pytest.raises(FeedError, match=r"/home: not an RSS or Atom feed \(served as application/rss\+xml\)$"):
        fetch_and_parse(feed_server, tmp_path, "/home", page, content_type="application/rss+xml")


def test_an_entity_bomb_is_refused_before_parsing(feed_server: FeedServer, tmp_path: Path) -> None:
    with pytest.raises(FeedError, match=r"/bomb\.rss: refused: the feed declares XML entities"):
        fetch_and_parse(feed_server, tmp_path, "/bomb.rss", BILLION_LAUGHS)


def test_an_entity_bomb_in_utf16_is_refused_too(feed_server: FeedServer, tmp_path: Path) -> None:
    body = BILLION_LAUGHS.replace(b'version="1.0"', b'version="1.0" encoding="utf-16"').decode().encode("utf-16")
    with pytest.raises(FeedError, match="declares XML entities"):
        fetch_and_parse(feed_server, tmp_path, "/bomb16.rss", body)


def test_an_external_entity_is_refused(feed_server: FeedServer, tmp_path: Path) -> None:
    xxe = (
        b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<rss version="2.0"><channel><item><title>&x;</title></item></channel></rss>'
    )
    with pytest.raises(FeedError, match="declares XML entities"):
        fetch_and_parse(feed_server, tmp_path, "/xxe.rss", xxe)


def test_entity_text_inside_an_article_is_not_a_declaration(feed_server: FeedServer, tmp_path: Path) -> None:
    item = rss_item(
        "How XML bombs work",
        "https://news.example.org/xml",
        extra="<description><![CDATA[<p>They start with <!ENTITY lol ...></p>]]></description>",
    )
    parsed = fetch_and_parse(feed_server, tmp_path, "/ok.rss", rss(item))
    assert extract_entries(parsed)[0].title == "How XML bombs work"


def test_malformed_xml_is_an_error_with_the_line(feed_server: FeedServer, tmp_path: Path) -> None:
    broken = rss(rss_item("Fine", "https://news.example.org/a"), "<item><title>Broken</item>")
    with pytest.raises(FeedError, match=r"/broken\.rss: malformed XML \(line 2, column \d+: mismatched tag\)$"):
        fetch_and_parse(feed_server, tmp_path, "/broken.rss", broken)


def test_an_empty_feed_is_an_error(feed_server: FeedServer, tmp_path: Path) -> None:
    with pytest.raises(FeedError, match=r"/empty\.rss: the feed has no items$"):
        fetch_and_parse(feed_server, tmp_path, "/empty.rss", rss())


def test_an_empty_response_is_an_error(feed_server: FeedServer, tmp_path: Path) -> None:
    with pytest.raises(FeedError, match=r"/nothing: not an RSS or Atom feed"):
        fetch_and_parse(feed_server, tmp_path, "/nothing", b"")


@pytest.mark.parametrize(
    ("declare", "content_type"),
    [
        (True, "application/rss+xml"),  # well-formed, encoding declared: bodies lifted out by lxml
        (False, "application/rss+xml; charset=ISO-8859-1"),  # HTTP charset only: feedparser alone
    ],
)
def test_full_bodies_arrive_whichever_path_parses_them(
    feed_server: FeedServer, tmp_path: Path, declare: bool, content_type: str
) -> None:
    item = rss_item(
        "Gen\u00e8ve",
        "https://news.example.org/geneve",
        guid="g-1",
        extra=(
            "<content:encoded><![CDATA[<p>Caf\u00e9 <b>talks</b> &amp; more</p>]]></content:encoded>"
            '<media:content url="/img/g.jpg" medium="image"><media:title>Lake</media:title></media:content>'
        ),
    )
    body = (
        rss(item, encoding="iso-8859-1", declare=declare)
        .replace("<rss ", '<rss xmlns:content="http://purl.org/rss/1.0/modules/content/" ', 1)
        .encode("latin-1")
    )
    [entry] = extract_entries(fetch_and_parse(feed_server, tmp_path, "/body.rss", body, content_type=content_type))
    assert entry.content_html == "<p>Caf\u00e9 <b>talks</b> &amp; more</p>"
    assert entry.title == "Gen\u00e8ve" and entry.guid == "g-1"
    assert entry.image is not None and entry.image.alt == "Lake"
    assert entry.image.src == "https://news.example.org/img/g.jpg"


def parse_bytes(body: bytes, content_type: str | None = "application/rss+xml") -> ParsedFeed:
    from newsletter.gather.fetch import FetchedFeed

    return parse_feed(FetchedFeed("feed.rss", "https://news.example.org/feed.rss", body, content_type))


ITEM = rss_item("Diplomacy Watch: safe", "https://news.example.org/safe")


@pytest.mark.parametrize(
    "prolog",
    [
        b'<?xml version="1.0"?><!-- <a href="x"> -->',
        b'<?xml version="1.0"?><?xml-stylesheet href="<a"?>',
        b'\xef\xbb\xbf\n<?xml version="1.0"?>\n<!-- <!DOCTYPE x> -->',
    ],
    ids=["comment with <a", "processing instruction with <a", "BOM and newline"],
)
@pytest.mark.parametrize(
    "doctype",
    [
        b'<!DOCTYPE rss [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>',
        b'<!DOCTYPE rss [<!ENTITY % p SYSTEM "http://evil.example.net/x.dtd">%p;]>',
        b'<!DOCTYPE rss [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
    ],
    ids=["internal", "parameter", "external"],
)
def test_entity_declarations_are_refused_whatever_comes_before_them(prolog: bytes, doctype: bytes) -> None:
    body = prolog + doctype + rss(ITEM, declare=False).encode()
    with pytest.raises(FeedError, match=r"^feed\.rss: refused: the feed declares XML entities"):
        parse_bytes(body)


def test_a_plain_doctype_such_as_rss_091s_is_accepted_and_not_fetched() -> None:
    doctype = (
        b'<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" '
        b'"http://my.netscape.com/publish/formats/rss-0.91.dtd">'
    )
    parsed = parse_bytes(b'<?xml version="1.0"?>' + doctype + rss(ITEM, declare=False).encode())
    assert [e.title for e in extract_entries(parsed)] == ["Diplomacy Watch: safe"]


@pytest.mark.parametrize(("lead", "skipped"), [(b"\n", 1), (b"\r\n  \t", 5), (b"\xef\xbb\xbf\n\n", 2)])
def test_whitespace_before_the_declaration_is_forgiven_and_noted(lead: bytes, skipped: int) -> None:
    parsed = parse_bytes(lead + rss(ITEM).encode())
    assert len(parsed.entries) == 1
    assert (
        parsed.forgiven[0]
        == f"feed.rss: {skipped} byte{'s' if skipped > 1 else ''} of whitespace before the XML declaration ignored"
    )


@pytest.mark.parametrize(
    ("written", "utc"),
    [
        ("Seg, 24 Set 2018 10:00:00 -0300", "2018-09-24 13:00"),  # Portuguese
        ("sáb, 13 dic 2025 18:30:00 +0000", "2025-12-13 18:30"),  # Spanish
        ("lun., 3 févr. 2020 08:00:00 +0100", "2020-02-03 07:00"),  # French
        ("mer., 12 juil. 2023 09:00:00 GMT", "2023-07-12 09:00"),
        ("Di, 05 Mär 2019 12:00:00 +0100", "2019-03-05 11:00"),  # German
        ("gio, 10 ott 2024 07:00:00 +0200", "2024-10-10 05:00"),  # Italian
        ("wo, 02 okt 2024 10:00:00 +0200", "2024-10-02 08:00"),  # Dutch
        ("Fri, 25 Oct 2024 12:00:00 +0000", "2024-10-25 12:00"),  # English, unchanged
    ],
)
def test_localized_rfc822_dates_are_read(written: str, utc: str) -> None:
    [entry] = extract_entries(parse_bytes(rss(rss_item("T", "https://news.example.org/t", written)).encode()))
    assert entry.published is not None and f"{entry.published:%Y-%m-%d %H:%M}" == utc
