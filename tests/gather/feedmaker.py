"""Small hand-made feeds for the gather tests."""

from __future__ import annotations


def rss(*items: str, channel: str = "", encoding: str = "utf-8", declare: bool = True) -> str:
    """A small RSS 2.0 document around ``items``."""
    head = f'<?xml version="1.0" encoding="{encoding}"?>\n' if declare else ""
    return (
        f'{head}<rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/">'
        f"<channel><title>Test feed</title><link>https://news.example.org/</link>{channel}"
        + "".join(items)
        + "</channel></rss>"
    )


def rss_item(
    title: str,
    link: str,
    published: str = "Fri, 25 Oct 2024 12:00:00 +0000",
    guid: str | None = None,
    extra: str = "",
) -> str:
    guid_xml = f'<guid isPermaLink="false">{guid}</guid>' if guid else ""
    return f"<item><title>{title}</title><link>{link}</link>{guid_xml}<pubDate>{published}</pubDate>{extra}</item>"
