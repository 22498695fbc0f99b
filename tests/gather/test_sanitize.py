"""The sanitizer: what an email can show stays; every trap in the shared fixtures and the
usual hostile HTML goes; URLs come out absolute; text and excerpts read cleanly."""

from __future__ import annotations

import pytest

from newsletter.sanitize import cut_words, html_to_text, sanitize_html

BASE = "https://news.example.org/europe/article"


@pytest.mark.parametrize(
    ("dirty", "clean"),
    [
        ("<p>Hi <script>alert(1)</script>there</p>", "<p>Hi there</p>"),
        ("<style>p{color:red}</style><p>x</p>", "<p>x</p>"),
        ('<iframe src="https://evil.example.net/frame">inner</iframe><p>x</p>', "<p>x</p>"),
        ('<form action="/x"><input name="q">words</form><p>x</p>', "<p>x</p>"),
        ('<p onclick="alert(1)" style="color:red" class="c">x</p>', "<p>x</p>"),
        ('<a href="javascript:alert(2)">here</a>', "here"),
        ('<a href="JaVaScRiPt:alert(2)">here</a>', "here"),
        ('<a href="data:text/html,<script>alert(1)</script>">d</a>', "d"),
        ('<img src="data:image/png;base64,iVBORw0KGgo=" alt="x">', ""),
        ('<img src="https://pixel.tracker.example.net/p.gif" width="1" height="1">', ""),
        ('<img src="https://pixel.tracker.example.net/p.gif" width="0" height="0">', ""),
        ('<p><a href="ftp://files.example.org/x">f</a></p>', "<p>f</p>"),
        ("<h1>Top</h1><h5>Low</h5>", "<h2>Top</h2><h4>Low</h4>"),
        ("<div><span>kept text</span></div>", "kept text"),
        ("<p>a<!-- secret comment -->b</p>", "<p>ab</p>"),
    ],
)
def test_traps_are_removed(dirty: str, clean: str) -> None:
    assert sanitize_html(dirty, BASE) == clean


def test_what_an_email_can_show_is_kept() -> None:
    html = (
        "<h2>H2</h2><h3>H3</h3><h4>H4</h4><p><strong>s</strong> <em>e</em> <b>b</b> <i>i</i><br></p>"
        "<ul><li>one</li></ul><ol><li>two</li></ol><blockquote><p>q</p></blockquote><hr>"
        '<figure><img src="https://img.example.org/a.jpg" alt="A photo" width="600" height="400">'
        "<figcaption>Caption</figcaption></figure>"
    )
    assert sanitize_html(html, BASE) == html


def test_links_get_noopener_and_keep_their_tracking_free_href() -> None:
    out = sanitize_html('<a href="https://news.example.org/x" target="_blank" rel="opener">x</a>', BASE)
    assert out == '<a href="https://news.example.org/x" rel="noopener">x</a>'


def test_mailto_links_survive_but_not_as_image_sources() -> None:
    assert sanitize_html('<a href="mailto:desk@news.example.org">mail</a>', BASE) == (
        '<a href="mailto:desk@news.example.org" rel="noopener">mail</a>'
    )
    assert sanitize_html('<img src="mailto:desk@news.example.org">', BASE) == ""


@pytest.mark.parametrize(
    ("relative", "absolute"),
    [
        ("/g7-loan", "https://news.example.org/g7-loan"),
        ("media/photo.jpg", "https://news.example.org/europe/media/photo.jpg"),
        ("../asia/x", "https://news.example.org/asia/x"),
        ("//cdn.example.org/y.jpg", "https://cdn.example.org/y.jpg"),
    ],
)
def test_relative_urls_become_absolute(relative: str, absolute: str) -> None:
    assert f'href="{absolute}"' in sanitize_html(f'<a href="{relative}">x</a>', BASE)
    assert f'src="{absolute}"' in sanitize_html(f'<img src="{relative}" alt="">', BASE)


def test_relative_urls_without_an_absolute_base_are_dropped() -> None:
    assert sanitize_html('<p><a href="/x">x</a><img src="y.jpg"></p>', "") == "<p>x</p>"


def test_the_fixture_teaser_traps(latest_xml: bytes) -> None:
    import feedparser

    feed = feedparser.parse(latest_xml, sanitize_html=False, resolve_relative_uris=False)
    summary = next(e for e in feed.entries if "G7 loan" in e.title).summary
    out = sanitize_html(summary, "https://news.example.org/")
    for trap in ("<script", "document.cookie", "onclick", "javascript:", "<iframe", "evil.example.net",
                 "pixel.tracker", "<style", "alert("):
        assert trap not in out
    assert '<a href="https://news.example.org/g7-loan-questions?utm_source=feed" rel="noopener">read on</a>' in out
    assert "Click here or" in out


def test_the_fixture_roundup_traps(roundup_xml: bytes) -> None:
    import feedparser

    entry = feedparser.parse(roundup_xml, sanitize_html=False).entries[0]
    out = sanitize_html(entry.content[0].value, entry.link)
    assert "trackReader" not in out and "<script" not in out and "pixel.tracker" not in out
    assert "<h2>Other Ukraine news this week</h2>" in out and "<blockquote>" in out


def test_text_drops_script_and_style_and_spaces_blocks() -> None:
    html = "<p>One&amp;two</p><script>var x = 1;</script><p>Three<br>four</p><style>p{}</style>"
    assert html_to_text(html) == "One&two Three four"
    assert html_to_text("plain   text\n here") == "plain text here"


def test_cut_words_cuts_at_a_word_boundary_with_an_ellipsis() -> None:
    assert cut_words("one two three four", 10) == "one two three four"
    assert cut_words("one two, three four", 2) == "one two…"
    assert cut_words("Land for security guarantees", 99, 20) == "Land for security…"
    assert cut_words("Donaudampfschifffahrtsgesellschaft", 5, 10) == "Donaudamp…"
