"""The sanitizer: what an email can show stays; every trap in the shared fixtures and the
usual hostile HTML goes; URLs come out absolute; text and excerpts read cleanly."""

from __future__ import annotations

import pytest

from newsletter.sanitize import cut_words, html_to_text, sanitize_html, unescape_markup, upgrade_https

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
    for trap in (
        "<script",
        "document.cookie",
        "onclick",
        "javascript:",
        "<iframe",
        "evil.example.net",
        "pixel.tracker",
        "<style",
        "alert(",
    ):
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


@pytest.mark.parametrize(
    "hidden",
    [
        '<img src="https://img.example.org/p.gif" style="display:none">',
        '<img src="https://img.example.org/p.gif" style="DISPLAY: none !important">',
        '<img src="https://img.example.org/p.gif" style="visibility:hidden">',
        '<img src="https://img.example.org/p.gif" style="width:1px;height:1px">',
        '<img src="https://img.example.org/p.gif" style="height: 0px">',
        '<img src="https://img.example.org/p.gif" width="1.0" height="1.0">',
        '<img src="https://img.example.org/p.gif" width="1px" height="1px">',
        '<a href="http://feeds.feedburner.com/~ff/Example?a=x:y"><img src="http://feeds.feedburner.com/~ff/Example?d=y" border="0"></a>',
        '<img src="http://feeds.feedburner.com/~r/Example/~4/abc" height="1" width="1">',
        '<img src="https://assets.feedblitz.com/i/fblike20.png">',
        '<img src="https://pixel.wp.com/b.gif?host=x">',
        '<img src="https://www.google-analytics.com/collect?v=1">',
        '<img src="https://analytics.example.org/open.gif">',
    ],
)
def test_hidden_images_share_buttons_and_beacons_go(hidden: str) -> None:
    assert sanitize_html(f"<p>Text{hidden}</p>", BASE) == "<p>Text</p>"


def test_images_get_alt_from_their_caption_or_an_empty_one() -> None:
    html = (
        '<figure><img src="https://img.example.org/a.jpg"><figcaption>Talks in <em>Geneva</em> &amp; "Bern"'
        '</figcaption></figure><p><img src="https://img.example.org/b.jpg" width="640px"></p>'
        '<p><img src="https://img.example.org/c.jpg" alt="Own words" style="width: 320px; border: 0"></p>'
    )
    assert sanitize_html(html, BASE) == (
        '<figure><img src="https://img.example.org/a.jpg" alt="Talks in Geneva &amp; &quot;Bern&quot;">'
        '<figcaption>Talks in <em>Geneva</em> &amp; "Bern"</figcaption></figure>'
        '<p><img src="https://img.example.org/b.jpg" alt="" width="640"></p>'
        '<p><img src="https://img.example.org/c.jpg" alt="Own words" width="320"></p>'
    )


def test_http_becomes_https_only_on_the_given_hosts() -> None:
    html = (
        '<a href="http://news.example.org/a">a</a><a href="http://cdn.news.example.org/b">b</a>'
        '<a href="http://other.example.net/c">c</a><img src="http://news.example.org:80/i.jpg" alt="">'
    )
    out = sanitize_html(html, BASE, ["news.example.org"])
    assert 'href="https://news.example.org/a"' in out and 'href="https://cdn.news.example.org/b"' in out
    assert 'href="http://other.example.net/c"' in out and 'src="https://news.example.org/i.jpg"' in out
    assert upgrade_https("http://news.example.org.evil.example/x", ["news.example.org"]).startswith("http:")


@pytest.mark.parametrize(
    ("escaped", "once"),
    [
        (
            "&lt;!-- SC_OFF --&gt;&lt;div class=&quot;md&quot;&gt;&lt;p&gt;Hi&lt;/p&gt;&lt;/div&gt;",
            '<!-- SC_OFF --><div class="md"><p>Hi</p></div>',
        ),
        ("  &lt;p&gt;Hi &amp;amp; bye&lt;/p&gt;", "  <p>Hi &amp; bye</p>"),
        ("Use the &lt;p&gt; tag for paragraphs", "Use the &lt;p&gt; tag for paragraphs"),  # prose
        ("<p>Real &lt;b&gt; markup</p>", "<p>Real &lt;b&gt; markup</p>"),  # already HTML
        ("3 &lt; 4 and 5 &gt; 2", "3 &lt; 4 and 5 &gt; 2"),
    ],
)
def test_markup_escaped_twice_is_unescaped_once(escaped: str, once: str) -> None:
    assert unescape_markup(escaped) == once
