"""The archive feed and sharing: /archive/feed.xml is valid Atom (parsed by feedparser
and checked for RFC 4287's required elements), holds the last 20 sent issues with their
web version, keeps entry ids stable; archive pages link it and carry Open Graph and
Twitter card tags with absolute URLs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import feedparser
import lxml.etree
import lxml.html
import pytest
from fastapi.testclient import TestClient

from newsletter import issuefile
from newsletter.config import Settings

from .conftest import BASE_URL

ATOM = "{http://www.w3.org/2005/Atom}"
EXAMPLE = "2024-10-25"


def publish(settings: Settings, count: int) -> list[str]:
    """``count`` sent issues, one a week back from the example issue; their slugs, newest first."""
    base = issuefile.load(issuefile.path_for(settings.issues_dir, EXAMPLE))
    slugs = []
    for n in range(count):
        day = base.date - dt.timedelta(weeks=n)
        issue = base.model_copy(
            update={
                "slug": day.isoformat(),
                "date": day,
                "subject": f"Week of {day:%B %-d}",
                "status": "sent",
                "sent_at": dt.datetime.combine(day, dt.time(9), tzinfo=dt.UTC),
            }
        )
        issuefile.save(issue, issuefile.path_for(settings.issues_dir, issue.slug))
        slugs.append(issue.slug)
    return slugs


def test_the_feed_is_valid_atom_with_the_last_twenty_issues(client: TestClient, web_settings: Settings) -> None:
    slugs = publish(web_settings, 21)
    draft = issuefile.load(issuefile.path_for(web_settings.issues_dir, EXAMPLE))
    issuefile.save(
        draft.model_copy(update={"slug": "2024-11-01", "date": dt.date(2024, 11, 1), "status": "draft"}),
        issuefile.path_for(web_settings.issues_dir, "2024-11-01"),
    )
    response = client.get("/archive/feed.xml")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"
    root = lxml.etree.fromstring(response.content)
    assert root.tag == f"{ATOM}feed"
    # RFC 4287 4.1.1: a feed has exactly one id, title and updated, and an author (or every entry has one)
    for name in ("id", "title", "updated", "author"):
        assert len(root.findall(f"{ATOM}{name}")) == 1, name
    parsed = feedparser.parse(response.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    feed = parsed.feed
    assert feed.id == f"{BASE_URL}/archive/" and feed.title == web_settings.publication.name
    assert feed.author == web_settings.publication.organisation
    assert feed.updated_parsed[:3] == (2024, 10, 25)
    links = {link.rel: link for link in feed.links}
    assert links["self"].href == f"{BASE_URL}/archive/feed.xml" and links["self"].type == "application/atom+xml"
    assert links["alternate"].href == f"{BASE_URL}/archive" and links["alternate"].type == "text/html"
    entries = parsed.entries
    assert [e.link for e in entries] == [f"{BASE_URL}/archive/{slug}" for slug in slugs[:20]]
    assert "2024-11-01" not in response.text  # drafts stay out
    for entry, element in zip(entries, root.findall(f"{ATOM}entry"), strict=True):
        # 4.1.2: each entry has one id, title and updated, and content or an alternate link
        for name in ("id", "title", "updated", "content"):
            assert len(element.findall(f"{ATOM}{name}")) == 1, name
        assert entry.id.startswith("tag:127.0.0.1,") and entry.title.startswith("Week of ")
        assert entry.summary.startswith("North Korean troops")
        [content] = entry.content
        assert content.type == "text/html"
        body = lxml.html.fragment_fromstring(content.value, create_parent="div")
        shown = " ".join(body.text_content().split())
        assert web_settings.publication.postal_address in shown and "Diplomacy Watch" in shown
        assert "%%" not in content.value and "/unsubscribe/" not in content.value
    assert len({e.id for e in entries}) == 20


def test_entry_ids_stay_when_an_issue_changes(client: TestClient, web_settings: Settings) -> None:
    publish(web_settings, 2)
    before = feedparser.parse(client.get("/archive/feed.xml").content)
    path = issuefile.path_for(web_settings.issues_dir, EXAMPLE)
    issuefile.save(issuefile.load(path).model_copy(update={"subject": "Corrected headline"}), path)
    after = feedparser.parse(client.get("/archive/feed.xml").content)
    assert [e.id for e in after.entries] == [e.id for e in before.entries]
    assert after.entries[0].title == "Corrected headline" and before.entries[0].title != "Corrected headline"


def test_an_empty_archive_is_still_a_valid_feed(client: TestClient) -> None:
    parsed = feedparser.parse(client.get("/archive/feed.xml").content)
    assert not parsed.bozo and parsed.entries == [] and parsed.feed.title


def _head(html: str) -> dict[str, str]:
    doc = lxml.html.document_fromstring(html)
    found = {}
    for meta in doc.iter("meta"):
        key = meta.get("property") or meta.get("name")
        if key:
            found[key] = meta.get("content", "")
    return found


def test_archive_issue_pages_carry_share_tags(client: TestClient, web_settings: Settings) -> None:
    publish(web_settings, 1)
    issue = issuefile.load(issuefile.path_for(web_settings.issues_dir, EXAMPLE))
    assert issue.roundup is not None and issue.roundup.image is not None
    html = client.get(f"/archive/{EXAMPLE}").text
    meta = _head(html)
    url = f"{BASE_URL}/archive/{EXAMPLE}"
    assert meta["og:title"] == meta["twitter:title"] == issue.subject
    assert meta["og:description"] == meta["twitter:description"] == meta["description"] == issue.preheader
    assert meta["og:url"] == url and meta["og:type"] == "article"
    assert meta["og:image"] == meta["twitter:image"] == issue.roundup.image.src
    assert meta["og:image"].startswith("https://") and meta["twitter:card"] == "summary_large_image"
    doc = lxml.html.document_fromstring(html)
    feeds = doc.xpath('//head/link[@rel="alternate"][@type="application/atom+xml"]/@href')
    assert feeds == [f"{BASE_URL}/archive/feed.xml"]
    assert doc.xpath('//head/link[@rel="canonical"]/@href') == [url]


def test_an_issue_without_pictures_gets_a_small_card(client: TestClient, web_settings: Settings) -> None:
    path: Path = issuefile.path_for(web_settings.issues_dir, EXAMPLE)
    issue = issuefile.load(path)
    assert issue.roundup is not None
    bare = issue.model_copy(
        update={
            "status": "sent",
            "subject": 'Quotes "and" <tags>',
            "roundup": issue.roundup.model_copy(update={"image": None}),
            "teasers": [t.model_copy(update={"image": None}) for t in issue.teasers],
        }
    )
    issuefile.save(bare, path)
    meta = _head(client.get(f"/archive/{EXAMPLE}").text)
    assert meta["twitter:card"] == "summary" and "og:image" not in meta
    assert meta["og:title"] == 'Quotes "and" <tags>'  # escaped in the attribute, intact when read


def test_the_archive_list_links_the_feed(client: TestClient) -> None:
    doc = lxml.html.document_fromstring(client.get("/archive").text)
    assert doc.xpath('//head/link[@rel="alternate"][@type="application/atom+xml"]/@href') == [
        f"{BASE_URL}/archive/feed.xml"
    ]


@pytest.mark.parametrize("path", ["/archive/feed.xml/x", "/archive/feed.json"])
def test_near_misses_are_404(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404
