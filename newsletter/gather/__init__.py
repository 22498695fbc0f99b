"""Gather: build this week's draft issue from the publication's feeds.

``gather_issue`` fetches the round-up and teaser feeds, picks the week's content at an
as-of time and returns the draft with any warnings; ``write_draft`` saves it safely.
Modules: fetch (HTTP and files), parse (feedparser), extract (entries), select (the
rules), draft (the Issue and its file); feed HTML is cleaned by ``newsletter.sanitize``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import httpx

from newsletter.config import Settings
from newsletter.errors import ConfigError, FeedError, NoRoundupError
from newsletter.gather.draft import make_issue, write_draft
from newsletter.gather.extract import EntryRules, FeedEntries, FeedEntry, extract_feed
from newsletter.gather.fetch import FeedFetcher, user_agent
from newsletter.gather.parse import parse_feed
from newsletter.gather.select import pick_roundup, pick_teasers, sent_history
from newsletter.models import Issue

__all__ = ["GatherResult", "gather_issue", "parse_as_of", "write_draft"]


@dataclass(frozen=True)
class GatherResult:
    """The draft and what the editor should know about how it was made."""

    issue: Issue
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was forgiven or left out (--verbose)


def parse_as_of(text: str, zone: dt.tzinfo) -> dt.datetime:
    """An ISO 8601 time; without an offset it is in ``zone``; a bare date means its end."""
    text = text.strip()
    try:
        if len(text) == 10:  # 2024-10-25: everything published that day counts
            day = dt.date.fromisoformat(text)
            return dt.datetime.combine(day, dt.time(23, 59, 59), tzinfo=zone)
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=zone)


def gather_issue(
    settings: Settings,
    as_of: dt.datetime | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> GatherResult:
    """The draft issue for the week ending at ``as_of`` (default: now).

    Raises ``FeedError`` for a round-up feed that cannot be read (or a teaser feed, when
    ``sources.teasers.on_feed_error`` is ``fail``), and ``NoRoundupError`` when there is no
    new round-up and ``sources.no_roundup`` is ``skip``.
    """
    sources = settings.sources
    if sources is None:
        raise ConfigError(f"{settings.config_path}: sources: required to gather an issue")
    if as_of is None:
        as_of = dt.datetime.now(dt.UTC)
    elif as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=settings.zone)
    as_of = as_of.astimezone(dt.UTC)
    # Only earlier issues count: re-gathering this week's issue must find the same items.
    history, warnings = sent_history(settings.issues_dir, before=as_of.astimezone(settings.zone).date())
    agent = user_agent(settings.publication.public_url, sources.fetch.user_agent)
    rules = EntryRules(
        min_image_width=settings.templates.min_image_width,
        max_title_chars=sources.max_title_chars,
        https_hosts=tuple(sources.https_domains),
    )
    loaded: dict[str, FeedEntries] = {}
    notes: list[str] = []

    with FeedFetcher(sources.fetch, agent, transport) as fetcher:

        def entries_of(feed: str) -> FeedEntries:
            if feed not in loaded:  # a feed named twice is fetched once
                parsed = parse_feed(fetcher.fetch(feed))
                loaded[feed] = extract_feed(parsed, rules)
                notes.extend(parsed.forgiven)
                notes.extend(f"{feed}: left out {item.title!r}: {item.reason}" for item in loaded[feed].skipped)
            return loaded[feed]

        roundup_feed = entries_of(sources.roundup.feed)
        teaser_entries: list[FeedEntry] = []
        for feed in sources.teasers.feeds:
            try:
                teaser_entries.extend(entries_of(feed).entries)
            except FeedError as exc:
                if sources.teasers.on_feed_error == "fail":
                    raise
                warnings.append(f"{exc}; gathered without this teaser feed")

    choice = pick_roundup(roundup_feed.entries, sources.roundup, as_of, history, roundup_feed.skipped)
    if choice.entry is None:
        message = f"{sources.roundup.feed}: {choice.reason}"
        if sources.no_roundup == "skip":
            raise NoRoundupError(f"{message}; skipping this week (sources.no_roundup: skip)")
        warnings.append(f"{message}; this issue has teasers only")
    teasers = pick_teasers(teaser_entries, sources.teasers, as_of, history, choice.entry)
    if choice.entry is None and not teasers:
        raise NoRoundupError(f"{sources.roundup.feed}: {choice.reason}, and no teasers are new this week either")
    if choice.entry is not None and not teasers and sources.teasers.count:
        warnings.append("no new teasers this week: the issue has the round-up only")
    return GatherResult(make_issue(settings, as_of, choice.entry, teasers), warnings, notes)
