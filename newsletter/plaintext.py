"""Turn the (sanitized) HTML of an article body into readable plain text for the email's
text part: paragraphs wrapped at 72 columns, headings underlined, lists bulleted,
quotes marked with ``>``, and each link's URL shown after its text.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable

import lxml.html
from lxml import etree

WIDTH = 72
_BLOCKS = {
    "p",
    "div",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "li",
    "blockquote",
    "figure",
    "figcaption",
    "hr",
    "table",
    "tr",
    "pre",
}
_SPACE = re.compile(r"\s+")
_BR = "\x00"  # a hard line break (<br>); plain newlines in HTML are just spaces


def wrap(text: str, width: int = WIDTH, prefix: str = "", first: str | None = None) -> str:
    """Wrap one paragraph; long URLs are never broken."""
    text = _SPACE.sub(" ", text).strip()
    if not text:
        return ""
    return textwrap.fill(
        text,
        width=width,
        initial_indent=prefix if first is None else first,
        subsequent_indent=prefix,
        break_long_words=False,
        break_on_hyphens=False,
    )


def html_to_text(fragment: str, link: Callable[[str], str] = lambda url: url) -> str:
    """Render an HTML fragment as plain text; ``link`` maps each href (UTM tagging)."""
    if not fragment.strip():
        return ""
    root = lxml.html.fragment_fromstring(fragment, create_parent="div")
    blocks: list[str] = []
    _blocks(root, blocks, link, prefix="")
    return "\n\n".join(b for b in blocks if b.strip())


def _paragraph(text: str, prefix: str) -> str:
    """Wrap a paragraph's text, keeping its hard line breaks."""
    return "\n".join(line for line in (wrap(part, prefix=prefix) for part in text.split(_BR)) if line)


def _inline(el: etree._Element, link: Callable[[str], str]) -> str:
    """The text of an element's inline content, with ``text (url)`` for links."""
    out = [el.text or ""]
    for child in el:
        out.append(_inline_child(child, link))
        out.append(child.tail or "")
    return "".join(out)


def _inline_child(child: etree._Element, link: Callable[[str], str]) -> str:
    tag = child.tag if isinstance(child.tag, str) else ""
    if tag == "br":
        return _BR
    if tag == "img":
        alt = child.get("alt", "").strip()
        return f"[{alt}]" if alt else ""
    if tag == "a":
        text = _SPACE.sub(" ", _inline(child, link)).strip()
        href = child.get("href", "")
        if href and not href.startswith("mailto:"):
            url = link(href)
            return f"{text} ({url})" if text and text != href else url
        return text or href.removeprefix("mailto:")
    return _inline(child, link) if tag else ""


def _blocks(el: etree._Element, out: list[str], link: Callable[[str], str], prefix: str) -> None:
    """Walk block elements; loose inline content between them becomes a paragraph."""
    pending: list[str] = [el.text or ""]

    def flush() -> None:
        para = _paragraph("".join(pending), prefix)
        if para:
            out.append(para)
        pending.clear()

    for child in el:
        tag = child.tag if isinstance(child.tag, str) else ""
        if tag in _BLOCKS:
            flush()
            _block(child, tag, out, link, prefix)
        else:
            pending.append(_inline_child(child, link))
        pending.append(child.tail or "")
    flush()


def _block(el: etree._Element, tag: str, out: list[str], link: Callable[[str], str], prefix: str) -> None:
    if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
        title = _SPACE.sub(" ", _inline(el, link)).strip()
        if title:
            out.append(
                f"{prefix}{title.upper() if tag in ('h1', 'h2') else title}\n"
                f"{prefix}{'-' * min(len(title), WIDTH - len(prefix))}"
            )
    elif tag in ("ul", "ol"):
        items = [c for c in el if isinstance(c.tag, str) and c.tag == "li"]
        for n, item in enumerate(items, 1):
            bullet = f"{n}. " if tag == "ol" else "* "
            text = _SPACE.sub(" ", _inline(item, link)).strip()
            out.append(wrap(text, prefix=prefix + " " * len(bullet), first=prefix + bullet))
    elif tag == "blockquote":
        _blocks(el, out, link, prefix=prefix + "> ")
    elif tag == "hr":
        out.append(prefix + "-" * 20)
    elif tag in ("div", "figure", "table", "tr", "li"):
        _blocks(el, out, link, prefix)
    elif any(isinstance(c.tag, str) and c.tag in _BLOCKS for c in el):
        _blocks(el, out, link, prefix)  # a <p> or <figcaption> holding blocks of its own
    else:
        para = _paragraph(_inline(el, link), prefix)
        if para:
            out.append(para)
