"""Feed HTML made safe for an email: an nh3 allowlist of what an email can show, with
absolute http(s) URLs, ``rel="noopener"`` on links and no tracking pixels; and the same
HTML reduced to clean text for excerpts.
"""

from __future__ import annotations

import html
import re
from typing import Literal
from urllib.parse import urlsplit

import nh3

ALLOWED_TAGS = frozenset({
    "p", "h2", "h3", "h4", "ul", "ol", "li", "a", "strong", "em", "b", "i",
    "blockquote", "img", "br", "hr", "figure", "figcaption",
})
# Dropped together with everything inside them: their text is code, not prose.
DROPPED_WITH_CONTENT = frozenset({
    "script", "style", "iframe", "form", "object", "embed", "noscript", "template",
    "textarea", "select", "button", "svg", "math", "title", "frame", "frameset",
    "applet", "audio", "video", "canvas",
})
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "width", "height", "title"}}
LINK_SCHEMES = frozenset({"http", "https", "mailto"})

# nh3 serialises every attribute value in double quotes with inner quotes escaped, so a
# tag can be matched safely even when a value holds ">".
_IMG_TAG = re.compile(r'<img\b(?:[^>"]|"[^"]*")*>')
_A_OPEN = re.compile(r'<a\b(?:[^>"]|"[^"]*")*>')
_ATTR = re.compile(r'\s([a-z-]+)="([^"]*)"')
_EMPTY_BLOCK = re.compile(r"<(p|li|h2|h3|h4|blockquote|figure|figcaption)>\s*</\1>")
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


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    if tag == "img" and attribute == "src":
        # Relative sources pass on to nh3, which resolves them; mailto: is no image.
        scheme = urlsplit(value.strip()).scheme.lower()
        return value if scheme in ("", "http", "https") else None
    if attribute in ("width", "height"):
        value = value.strip().removesuffix("px")
        return value if value.isdigit() else None
    return value


def sanitize_html(fragment: str, base_url: str) -> str:
    """Clean feed HTML for an email: allowlisted tags, absolute URLs, no pixels or scripts.

    Relative URLs are resolved against ``base_url`` (the item's xml:base or its link);
    without an absolute base they are dropped, since they cannot work in an inbox.
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
    cleaned = _IMG_TAG.sub(_keep_real_image, cleaned)
    cleaned = _unwrap_dead_links(cleaned)
    previous = None
    while previous != cleaned:  # <li><p></p></li> empties in two passes
        previous, cleaned = cleaned, _EMPTY_BLOCK.sub("", cleaned)
    return cleaned.strip()


def _keep_real_image(match: re.Match[str]) -> str:
    attrs = dict(_ATTR.findall(match.group(0)))
    if "src" not in attrs:
        return ""
    for side in ("width", "height"):
        # 1x1 (or 0-pixel) images are open-tracking beacons, never content.
        if side in attrs and int(attrs[side]) <= 1:
            return ""
    return match.group(0)


def _unwrap_dead_links(fragment: str) -> str:
    """Drop the <a> tags that lost their href (javascript:, data:, ...), keep their text."""
    out: list[str] = []
    pos = 0
    for match in _A_OPEN.finditer(fragment):
        if ' href="' in match.group(0):
            continue
        out.append(fragment[pos:match.start()])
        close = fragment.find("</a>", match.end())
        if close == -1:
            pos = match.end()
            continue
        out.append(fragment[match.end():close])
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
