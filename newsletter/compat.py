"""The email-client compatibility report: which HTML and CSS features the built email
uses, and for each one that Gmail, Outlook (Windows, macOS, Outlook.com), Apple Mail
(macOS, iOS), Yahoo or Samsung Email does not support or supports only partly, the
caniemail note and what readers there get instead.

The support data is a dated snapshot of caniemail.com's (MIT licensed), vendored in
``newsletter/data/caniemail/`` and refreshed by ``scripts/refresh_caniemail.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from newsletter.render import Check

DATA = Path(__file__).parent / "data" / "caniemail" / "data.json"

# (caniemail family, platform) -> the client's name in the report.
CLIENTS: dict[tuple[str, str], str] = {
    ("gmail", "desktop-webmail"): "Gmail (web)",
    ("gmail", "ios"): "Gmail (iOS)",
    ("gmail", "android"): "Gmail (Android)",
    ("outlook", "windows"): "Outlook (Windows)",
    ("outlook", "macos"): "Outlook (macOS)",
    ("outlook", "outlook-com"): "Outlook.com",
    ("apple-mail", "macos"): "Apple Mail (macOS)",
    ("apple-mail", "ios"): "Apple Mail (iOS)",
    ("yahoo", "desktop-webmail"): "Yahoo Mail",
    ("samsung-email", "android"): "Samsung Email",
}

# What readers get where a feature the default templates use is missing. A feature
# listed with ``None`` carries content (text, links, images): a client that does not
# support it at all fails the check. One that is not listed is reported for a human
# to judge (a custom template can use anything).
FALLBACK: dict[str, str | None] = {
    "html-doctype": "standards mode is not guaranteed; the tables hold the layout",
    "html-style": "the inlined styles only: no phone sizes, no dark palette",
    "html-table": None,
    "html-div": None,
    "html-p": None,
    "html-h1-h6": None,
    "html-img": None,
    "html-lists": None,
    "html-span": None,
    "html-strong": None,
    "html-blockquote": None,
    "html-mailto-links": None,
    "html-anchor-links": None,
    "html-lang": "the reader's language setting picks the voice",
    "html-dir": "left-to-right text, as the default",
    "html-role": "tables are read as tables by screen readers",
    "html-align": "content aligned left",
    "html-valign": "cells aligned to the middle",
    "html-width": "the width from CSS",
    "html-height": "the image height from its width",
    "html-cellpadding": "the CSS padding",
    "html-cellspacing": "the CSS spacing",
    "html-meta-color-scheme": "the client's own dark mode (it may invert colours itself)",
    "html-aria-hidden": "screen readers may read the hidden preheader filler",
    "html-aria-label": "the visible text names the element",
    "css-at-media": "the 600 px layout, scaled down on phones",
    "css-at-media-prefers-color-scheme": "the light design, or the client's own colour inversion",
    "css-color-scheme": "the client's own dark mode",
    "css-important": "the inlined values",
    "css-selector-class": "the inlined styles",
    "css-selector-descendant": "the inlined styles",
    "css-selector-attribute": "the inlined styles",
    "css-selector-grouping": "the inlined styles",
    "css-selector-type": "the inlined styles",
    "css-selector-child": "the inlined styles",
    "css-border-radius": "square corners (square buttons)",
    "css-border": "no rules between stories",
    "css-border-collapse": "table spacing from cellspacing",
    "css-border-spacing": "table spacing from cellspacing",
    "css-background-color": "the bgcolor attribute's colour",
    "css-background": "the bgcolor attribute's colour",
    "css-box-sizing": "widths from the tables",
    "css-max-width": "the 600 px width from the tables (MSO conditional table)",
    "css-width": "the width attribute",
    "css-height": "the height attribute",
    "css-min-width": "the natural width",
    "css-margin": "slightly tighter spacing",
    "css-padding": "slightly tighter spacing (cell padding still applies)",
    "css-display": "block layout from the tables",
    "css-display-none": "the hidden preheader may show above the masthead",
    "css-visibility": "the hidden preheader may show above the masthead",
    "css-overflow": "the hidden preheader may take a line",
    "css-opacity": "the hidden preheader may show above the masthead",
    "css-max-height": "the hidden preheader may take a line",
    "css-mso-hide": "the hidden preheader may show",
    "css-font": "the client's default font",
    "css-font-size": "the client's default size",
    "css-font-weight": "regular weight",
    "css-font-style": "upright text",
    "css-line-height": "the client's default line spacing",
    "css-letter-spacing": "normal letter spacing in labels",
    "css-text-transform": "labels in the case they are written",
    "css-text-align": "the align attribute",
    "css-text-decoration": "links underlined",
    "css-vertical-align": "cells aligned to the middle",
    "css-direction": "left-to-right text, as the default",
    "css-word-break": "long words may widen a column",
    "css-table-layout": "automatic table layout",
    "css-color": "the client's default text colour",
    "css-inline-size": "the natural width",
    "css-unit-percent": "the pixel widths",
    "css-rgb": "the hex colours",
    "css-cursor": "the client's default pointer",
    "css-outline": "no outline around images",
    "css-word-spacing": "normal word spacing",
    "html-body": "the wrapper's own background (mj-body's colour is on a wrapper too)",
    "html-target": "links open in a new window or tab, as they do anyway",
}


@dataclass(frozen=True)
class ClientNote:
    """A feature the email uses that one client does not support (or only partly)."""

    feature: str  # the caniemail slug
    title: str
    client: str
    support: Literal["unsupported", "partial"]
    note: str
    fallback: str  # what readers there get instead; "" when unknown
    carries_content: bool


@lru_cache(maxsize=1)
def _features() -> dict[str, dict[str, Any]]:
    data = json.loads(DATA.read_text(encoding="utf-8"))
    return {f["slug"]: f for f in data["data"]}


def snapshot_date() -> str:
    """The date the vendored snapshot was taken (from its SNAPSHOT file)."""
    return (DATA.parent / "SNAPSHOT").read_text(encoding="utf-8").split()[0]


_STYLE_BLOCK = re.compile(r"<style[^>]*>(.*?)</style>", re.IGNORECASE | re.DOTALL)
_DECLARATION = re.compile(r"(?<![\w-])([a-z-]+)\s*:\s*([^;{}]+)")
_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_RULE = re.compile(r"([^{}@]+)\{")


def used_features(html: str) -> set[str]:
    """The caniemail slugs of what ``html`` uses: elements, attributes, CSS properties,
    at-rules and selectors."""
    import lxml.html

    known = _features()
    used: set[str] = set()

    def add(slug: str) -> None:
        if slug in known:
            used.add(slug)

    if re.match(r"\s*<!doctype", html, re.IGNORECASE):
        add("html-doctype")
    doc = lxml.html.document_fromstring(html)
    inline_css: list[str] = []
    for el in doc.iter():
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            add("html-h1-h6")
        elif tag in ("ul", "ol", "li"):
            add("html-lists")
        elif tag in ("b", "strong"):
            add("html-strong")
        elif tag in ("td", "tr", "tbody", "thead"):
            add("html-table")
        elif tag == "meta" and (el.get("name") or "").lower() in ("color-scheme", "supported-color-schemes"):
            add("html-meta-color-scheme")
        elif tag:
            add(f"html-{tag}")
        if tag == "a" and (el.get("href") or "").startswith("mailto:"):
            add("html-mailto-links")
        for attr in el.attrib:
            if attr == "style":
                inline_css.append(el.attrib[attr])
            elif attr not in ("href", "src", "alt", "class", "id", "name", "content", "title"):
                add(f"html-{attr}")
    css = _COMMENT.sub("", " ".join(_STYLE_BLOCK.findall(html)))
    if "@media" in css:
        add("css-at-media")
    if "prefers-color-scheme" in css:
        add("css-at-media-prefers-color-scheme")
    for selectors in _RULE.findall(re.sub(r"@media[^{]*\{", "", css)):
        for selector in selectors.split(","):
            selector = selector.strip()
            if not selector:
                continue
            if "," in selectors:
                add("css-selector-grouping")
            if "." in selector:
                add("css-selector-class")
            if "[" in selector:
                add("css-selector-attribute")
            if ">" in selector:
                add("css-selector-child")
            if " " in selector.replace(" > ", ">"):
                add("css-selector-descendant")
    for name, value in _DECLARATION.findall(" ".join(inline_css) + " " + re.sub(r"[^{}]*\{", "{", css)):
        _property(name, value, add)
    return used


def _property(name: str, value: str, add: Callable[[str], None]) -> None:
    """The slugs of one CSS declaration: the property (or its shorthand family), and
    what its value uses (``!important``, ``display:none``, ``rgb()``)."""
    if name.startswith("mso-") or name.startswith("-"):
        return
    if "!important" in value:
        add("css-important")
    if name == "display" and value.strip().startswith("none"):
        add("css-display-none")
    if "rgb(" in value or "rgba(" in value:
        add("css-rgb" if "rgb(" in value else "css-rgba")
    if name.startswith("border-") and name.endswith("radius"):
        add("css-border-radius")
    elif name.startswith(("border", "padding", "margin")) and f"css-{name}" not in _features():
        add(f"css-{name.split('-')[0]}")
    add(f"css-{name}")


def _latest(stats: dict[str, dict[str, dict[str, str]]], family: str, platform: str) -> str | None:
    """The support value of the newest version caniemail tested (its lists are in date order)."""
    versions = stats.get(family, {}).get(platform)
    if not versions:
        return None
    return str(list(versions.values())[-1])


def report(html: str) -> list[ClientNote]:
    """For each feature ``html`` uses and each client: what is unsupported or partial."""
    features = _features()
    notes: list[ClientNote] = []
    for slug in sorted(used_features(html)):
        feature = features[slug]
        for (family, platform), client in CLIENTS.items():
            value = _latest(feature["stats"], family, platform)
            if value is None or value[0] not in "na":
                continue
            numbers = re.findall(r"#(\d+)", value)
            note = " ".join(_plain(feature.get("notes_by_num", {}).get(n, "")) for n in numbers).strip()
            fallback = FALLBACK.get(slug, "")
            notes.append(
                ClientNote(
                    feature=slug,
                    title=feature["title"],
                    client=client,
                    support="unsupported" if value[0] == "n" else "partial",
                    note=note,
                    fallback=fallback or "",
                    carries_content=slug in FALLBACK and fallback is None,
                )
            )
    return notes


def _plain(markdown: str) -> str:
    """A caniemail note as one plain line: links keep their text, code its ticks."""
    return " ".join(re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown).split())


def checks(notes: Iterable[ClientNote]) -> list[Check]:
    """Errors for content a client cannot show; warnings for what has no known fallback."""
    out: list[Check] = []
    for n in notes:
        if n.carries_content and n.support == "unsupported":
            out.append(
                Check(
                    "error",
                    f"{n.client} does not support {n.title} ({n.feature}), "
                    f"which carries content{': ' + n.note if n.note else ''}",
                )
            )
        elif not n.carries_content and not n.fallback:
            support = "not supported" if n.support == "unsupported" else "only partly supported"
            out.append(
                Check(
                    "warning",
                    f"{n.client}: {n.title} ({n.feature}) is {support}; check how "
                    f"the email degrades there{': ' + n.note if n.note else ''}",
                )
            )
    return out
