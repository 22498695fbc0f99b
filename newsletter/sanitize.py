"""Feed HTML made safe for an email: an nh3 allowlist of what an email can show, with
absolute http(s) URLs, ``rel="noopener"`` on links, no tracking pixels, share buttons or
hidden images, and an alt on every image; the one list of share/tracking image patterns;
and the same HTML reduced to clean text for excerpts.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterable
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import nh3

ALLOWED_TAGS = frozenset(
    {
        "p",
        "h2",
        "h3",
        "h4",
        "ul",
        "ol",
        "li",
        "a",
        "strong",
        "em",
        "b",
        "i",
        "blockquote",
        "img",
        "br",
        "hr",
        "figure",
        "figcaption",
    }
)
# Dropped together with everything inside them: their text is code, not prose.
DROPPED_WITH_CONTENT = frozenset(
    {
        "script",
        "style",
        "iframe",
        "form",
        "object",
        "embed",
        "noscript",
        "template",
        "textarea",
        "select",
        "button",
        "svg",
        "math",
        "title",
        "frame",
        "frameset",
        "applet",
        "audio",
        "video",
        "canvas",
    }
)
# style is read on images (to drop hidden ones and learn their size), then removed.
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "width", "height", "title", "style"}}
IMG_ATTRIBUTE_ORDER = ("src", "alt", "width", "height", "title")
LINK_SCHEMES = frozenset({"http", "https", "mailto"})

# Share buttons, counters and beacons that feeds put among an article's images: never
# content, never a lead image. Hosts match themselves and their subdomains.
TRACKING_IMAGE_HOSTS = frozenset(
    {
        "feedburner.com",
        "feedproxy.google.com",
        "feedblitz.com",
        "feedsportal.com",
        "feeds.wordpress.com",
        "pixel.wp.com",
        "stats.wordpress.com",
        "google-analytics.com",
        "googletagmanager.com",
        "doubleclick.net",
        "scorecardresearch.com",
        "quantserve.com",
        "pixel.facebook.com",
        "bat.bing.com",
        "analytics.twitter.com",
        "ad.doubleclick.net",
        "feeds.feedblitz.com",
        "pixel.mathtag.com",
        "counter.yadro.ru",
    }
)
TRACKING_IMAGE_PATHS = ("/~ff/", "/~r/", "/~a/", "/~f/", "/~i/")  # FeedBurner's flares
TRACKING_HOST_LABELS = frozenset({"analytics", "pixel", "tracking", "tracker", "beacon"})

# nh3 serialises every attribute value in double quotes with inner quotes escaped, so a
# tag can be matched safely even when a value holds ">".
_IMG_TAG = re.compile(r'<img\b(?:[^>"]|"[^"]*")*>')
_A_OPEN = re.compile(r'<a\b(?:[^>"]|"[^"]*")*>')
_ATTR = re.compile(r'\s([a-z-]+)="([^"]*)"')
_EMPTY_BLOCK = re.compile(r"<(p|li|h2|h3|h4|blockquote|figure|figcaption)>\s*</\1>")
_EMPTY_LINK = re.compile(r'<a\b(?:[^>"]|"[^"]*")*>\s*</a>')  # a share button without its image
_FIGURE = re.compile(r"<figure>.*?</figure>", re.DOTALL)
_FIGCAPTION = re.compile(r"<figcaption>(.*?)</figcaption>", re.DOTALL)
_URL_ATTR = re.compile(r'\b(src|href)="(http://[^"]*)"')
_BLOCK_BOUNDARY = re.compile(
    r"(?i)<(/?(?:p|div|br|li|ul|ol|h[1-6]|blockquote|tr|td|th|figure|figcaption|section|"
    r"article|header|footer|table|hr|dd|dt|pre)\b)"
)
_SPACES = re.compile(r"\s+")
# Headings outside the allowlist keep their rank as the nearest allowed one.
_HEADING = re.compile(r"(?i)<(/?)h([156])\b")
_HEADING_RANK = {"1": "2", "5": "4", "6": "4"}


def _is_http(url: str) -> bool:
    return urlsplit(url).scheme.lower() in ("http", "https")


def is_tracking_image(url: str) -> bool:
    """Whether ``url`` is a share button, counter or beacon rather than a picture."""
    parts = urlsplit(html.unescape(url).strip())
    labels = (parts.hostname or "").lower().split(".")
    if labels[0] in TRACKING_HOST_LABELS:
        return True
    if any(".".join(labels[i:]) in TRACKING_IMAGE_HOSTS for i in range(len(labels) - 1)):
        return True
    return any(marker in parts.path for marker in TRACKING_IMAGE_PATHS)


def upgrade_https(url: str, https_hosts: Iterable[str]) -> str:
    """``url`` over https when it is http on one of ``https_hosts`` (or a subdomain):
    the publisher's own sites, known to serve https. Nothing else is guessed."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return url
    host = (parts.hostname or "").lower()
    if not any(host == h or host.endswith("." + h) for h in https_hosts):
        return url
    netloc = parts.netloc.removesuffix(":80")
    return urlunsplit(("https", netloc, parts.path, parts.query, parts.fragment))


_ESCAPED_MARKUP = re.compile(r"^\s*&lt;(?:!--|/?[a-zA-Z][a-zA-Z0-9]*(?:\s|/|&gt;))")
_REAL_TAG = re.compile(r"<(?:!--|/?[a-zA-Z])")


def unescape_markup(fragment: str) -> str:
    """Feed HTML escaped twice (``&lt;div class="md"&gt;``, as Reddit sends it) unescaped
    once; only when it has no real tag and opens with an escaped one, so prose that talks
    about ``&lt;p&gt;`` tags is left alone."""
    if _REAL_TAG.search(fragment) or not _ESCAPED_MARKUP.match(fragment):
        return fragment
    return html.unescape(fragment)


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    if tag == "img" and attribute == "src":
        # Relative sources pass on to nh3, which resolves them; mailto: is no image.
        scheme = urlsplit(value.strip()).scheme.lower()
        return value if scheme in ("", "http", "https") else None
    if attribute in ("width", "height"):
        pixels = _pixels(value)
        return None if pixels is None else str(pixels)
    return value


def _pixels(value: str) -> int | None:
    """``"30"``, ``"30px"`` and ``"1.0"`` as whole pixels; percentages and words: None."""
    text = value.strip().lower().removesuffix("px").strip()
    try:
        number = float(text)
    except ValueError:
        return None
    return max(0, round(number)) if number == number and abs(number) < 1e6 else None


def sanitize_html(fragment: str, base_url: str, https_hosts: Iterable[str] = ()) -> str:
    """Clean feed HTML for an email: allowlisted tags, absolute URLs, no pixels or scripts.

    Relative URLs are resolved against ``base_url`` (the item's xml:base or its link);
    without an absolute base they are dropped, since they cannot work in an inbox. http
    URLs on ``https_hosts`` become https. An image without alt gets its figure's caption,
    or ``alt=""`` (decorative).
    """
    if not fragment.strip():
        return ""
    relative: Literal["deny"] | tuple[Literal["rewrite_with_base"], str] = (
        ("rewrite_with_base", base_url) if _is_http(base_url) else "deny"
    )
    fragment = _HEADING.sub(lambda m: f"<{m.group(1)}h{_HEADING_RANK[m.group(2)]}", fragment)
    cleaned = nh3.clean(
        fragment,
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(DROPPED_WITH_CONTENT),
        attributes={tag: set(attrs) for tag, attrs in ALLOWED_ATTRIBUTES.items()},
        attribute_filter=_attribute_filter,
        link_rel="noopener",
        url_schemes=set(LINK_SCHEMES),
        url_relative=relative,
        strip_comments=True,
    )
    cleaned = _clean_images(cleaned)
    cleaned = _unwrap_dead_links(cleaned)
    previous = None
    while previous != cleaned:  # <li><p></p></li> empties in two passes
        previous, cleaned = cleaned, _EMPTY_BLOCK.sub("", _EMPTY_LINK.sub("", cleaned))
    hosts = tuple(https_hosts)
    if hosts:
        cleaned = _URL_ATTR.sub(lambda m: f'{m.group(1)}="{upgrade_https(m.group(2), hosts)}"', cleaned)
    return cleaned.strip()


def _clean_images(fragment: str) -> str:
    """Every image checked; those inside a <figure> take its caption as missing alt."""
    out: list[str] = []
    pos = 0
    for figure in _FIGURE.finditer(fragment):
        out.append(_IMG_TAG.sub(_real_image_match, fragment[pos : figure.start()]))
        caption = _FIGCAPTION.search(figure.group(0))
        alt = html.escape(html_to_text(caption.group(1))) if caption else ""
        out.append(_IMG_TAG.sub(functools.partial(_real_image_match, alt=alt), figure.group(0)))
        pos = figure.end()
    out.append(_IMG_TAG.sub(_real_image_match, fragment[pos:]))
    return "".join(out)


def _real_image_match(match: re.Match[str], alt: str = "") -> str:
    return _real_image(match.group(0), alt)


def _real_image(tag: str, fallback_alt: str) -> str:
    """``tag`` rebuilt without style, with alt; "" for beacons, share buttons and images a
    reader never sees (1x1, zero-sized, hidden by CSS)."""
    attrs = dict(_ATTR.findall(tag))
    if "src" not in attrs or is_tracking_image(attrs["src"]):
        return ""
    style = _style(html.unescape(attrs.pop("style", "")))
    if style.get("display") == "none" or style.get("visibility") == "hidden":
        return ""
    if style.get("opacity", "").strip() in ("0", "0.0"):
        return ""
    for side in ("width", "height"):
        css = _pixels(style[side]) if side in style and style[side].strip().endswith("px") else None
        if side not in attrs and css is not None:
            attrs[side] = str(css)
        # 1x1 (or 0-pixel) images are open-tracking beacons, never content.
        if (side in attrs and int(attrs[side]) <= 1) or (css is not None and css <= 1):
            return ""
    if not attrs.get("alt", "").strip():
        attrs["alt"] = fallback_alt
    parts = [f'{name}="{attrs[name]}"' for name in IMG_ATTRIBUTE_ORDER if name in attrs]
    return f"<img {' '.join(parts)}>"


def _style(declarations: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for declaration in declarations.split(";"):
        name, colon, value = declaration.partition(":")
        if colon:
            found[name.strip().lower()] = value.replace("!important", "").strip().lower()
    return found


def _unwrap_dead_links(fragment: str) -> str:
    """Drop the <a> tags that lost their href (javascript:, data:, ...), keep their text."""
    out: list[str] = []
    pos = 0
    for match in _A_OPEN.finditer(fragment):
        if ' href="' in match.group(0):
            continue
        out.append(fragment[pos : match.start()])
        close = fragment.find("</a>", match.end())
        if close == -1:
            pos = match.end()
            continue
        out.append(fragment[match.end() : close])
        pos = close + len("</a>")
    out.append(fragment[pos:])
    return "".join(out)


def html_to_text(fragment: str) -> str:
    """The visible text of an HTML fragment, on one line, without scripts or styles."""
    if "<" not in fragment and "&" not in fragment:
        return _SPACES.sub(" ", fragment).strip()
    spaced = _BLOCK_BOUNDARY.sub(r" <\1", fragment)
    text = nh3.clean(
        spaced,
        tags=set(),
        clean_content_tags=set(DROPPED_WITH_CONTENT),
        attributes={},
        link_rel=None,
    )
    return _SPACES.sub(" ", html.unescape(text)).strip()


def cut_words(text: str, max_words: int, max_chars: int | None = None) -> str:
    """``text`` cut at a word boundary to ``max_words`` (and ``max_chars``), with an ellipsis."""
    words = text.split()
    cut = words[:max_words]
    if max_chars is not None:
        while cut and len(" ".join(cut)) + 1 > max_chars:
            cut.pop()
    if len(cut) == len(words):
        return " ".join(words)
    if not cut:  # a single enormous word: cut it, since there is no boundary to use
        return text[: max(1, (max_chars or 1) - 1)] + "…"
    last = cut[-1].rstrip(",;:-–—")
    if last.endswith(".") and "." not in last[:-1]:  # a full stop, not "U.S."
        last = last[:-1]
    cut[-1] = last or cut[-1]
    return " ".join(cut) + "…"
