"""Choosing the week's content at an as-of time: the newest matching round-up, then the
newest teasers that are in the window, in the wanted sections, not sent before and not
duplicates (by guid or by canonical URL, i.e. without tracking parameters).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from newsletter.config import RoundupSource, TeaserSource
from newsletter.errors import IssueFileError
from newsletter.gather.extract import FeedEntry, SkippedItem
from newsletter.issuefile import list_issues

# Query parameters that say how a reader arrived, not what they asked for.
TRACKING_PARAMS = frozenset(
    {
        "fbclid",
        "gclid",
        "dclid",
        "gbraid",
        "wbraid",
        "msclkid",
        "yclid",
        "twclid",
        "ttclid",
        "li_fat_id",
        "igshid",
        "mc_cid",
        "mc_eid",
        "_ga",
        "_gl",
        "_hsenc",
        "_hsmi",
        "mkt_tok",
        "oly_anon_id",
        "oly_enc_id",
        "rb_clickid",
        "s_cid",
        "vero_conv",
        "vero_id",
        "wickedid",
        "ref_src",
        "cmpid",
        "ncid",
        "sr_share",
    }
)
TRACKING_PREFIXES = ("utm_", "pk_", "mtm_", "hsa_")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def canonical_url(url: str) -> str:
    """``url`` without tracking parameters or fragment, with scheme and host lower-cased."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if parts.port is not None and str(parts.port) != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{parts.port}"
    if parts.username or parts.password:
        host = f"{parts.netloc.rsplit('@', 1)[0]}@{host}"
    query = [
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if key.lower() not in TRACKING_PARAMS and not key.lower().startswith(TRACKING_PREFIXES)
    ]
    return urlunsplit((scheme, host, parts.path or "/", urlencode(query), ""))


@dataclass
class History:
    """What earlier sent issues already carried, by guid and by canonical URL."""

    guids: dict[str, Path] = field(default_factory=dict)
    urls: dict[str, Path] = field(default_factory=dict)

    def add(self, guid: str | None, url: str, where: Path) -> None:
        if guid:
            self.guids.setdefault(guid, where)
        self.urls.setdefault(canonical_url(url), where)

    def sent_in(self, entry: FeedEntry) -> Path | None:
        """The issue file that already carried ``entry``, if any."""
        if entry.guid and entry.guid in self.guids:
            return self.guids[entry.guid]
        return self.urls.get(canonical_url(entry.link))


def sent_history(issues_dir: Path, before: dt.date | None = None) -> tuple[History, list[str]]:
    """The round-ups and teasers of every issue with status "sent" (dated before ``before``),
    and warnings for the issue files that could not be read (their items may come round again).
    """
    history = History()
    warnings: list[str] = []
    if not issues_dir.is_dir():
        return history, warnings
    for path, issue in list_issues(issues_dir):
        if isinstance(issue, IssueFileError):
            warnings.append(f"{issue} (left out of the sent history)")
            continue
        if issue.status != "sent" or (before is not None and issue.date >= before):
            continue
        if issue.roundup is not None:
            history.add(issue.roundup.guid, issue.roundup.url, path)
        for teaser in issue.teasers:
            history.add(teaser.guid, teaser.url, path)
    return history, warnings


def in_window(entry: FeedEntry, as_of: dt.datetime, max_age_days: int) -> bool:
    """Published in the ``max_age_days`` up to ``as_of`` (later items are not out yet)."""
    if entry.published is None:
        return False
    return as_of - dt.timedelta(days=max_age_days) < entry.published <= as_of


MatchRules = Mapping[Literal["title_prefix", "category", "title_regex"], str]


class Matchable(Protocol):
    """An item as the round-up rules see it: a kept entry or a skipped item."""

    @property
    def title(self) -> str: ...
    @property
    def categories(self) -> frozenset[str]: ...


def matches_roundup(entry: Matchable, match: MatchRules) -> bool:
    """Every rule in ``match`` holds (title_prefix and category ignore case)."""
    prefix = match.get("title_prefix")
    if prefix is not None and not entry.title.casefold().startswith(prefix.strip().casefold()):
        return False
    category = match.get("category")
    if category is not None and " ".join(category.split()).casefold() not in entry.categories:
        return False
    pattern = match.get("title_regex")
    return not (pattern is not None and not re.search(pattern, entry.title))


def describe_match(match: MatchRules) -> str:
    return ", ".join(f"{key} {value!r}" for key, value in match.items())


def newest_first(entries: Iterable[FeedEntry]) -> list[FeedEntry]:
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(entries, key=lambda e: e.published or epoch, reverse=True)


@dataclass(frozen=True)
class RoundupChoice:
    """The round-up, or why there is none (for a message an editor can act on)."""

    entry: FeedEntry | None
    reason: str = ""


def pick_roundup(
    entries: Iterable[FeedEntry],
    rules: RoundupSource,
    as_of: dt.datetime,
    history: History,
    skipped: Iterable[SkippedItem] = (),
) -> RoundupChoice:
    """The newest item matching ``rules.match`` in the window that no sent issue carried;
    ``skipped`` (items left out of the feed) explain a miss better than "no match"."""
    matching = [e for e in newest_first(entries) if matches_roundup(e, rules.match)]
    window = f"in the {rules.max_age_days} days before {as_of:%Y-%m-%d %H:%M %Z}"
    if not matching:
        unusable = next((s for s in skipped if matches_roundup(s, rules.match)), None)
        if unusable is not None:
            return RoundupChoice(None, f"the round-up {unusable.title!r} was left out: {unusable.reason}")
        return RoundupChoice(None, f"no item matches {describe_match(rules.match)}")
    recent = [e for e in matching if in_window(e, as_of, rules.max_age_days)]
    if not recent:
        newest = matching[0]
        when = f"{newest.published:%Y-%m-%d}" if newest.published else "undated"
        return RoundupChoice(None, f"no round-up {window} (the newest, {newest.title!r}, is {when})")
    for entry in recent:
        if history.sent_in(entry) is None:
            return RoundupChoice(entry)
    sent = history.sent_in(recent[0])
    return RoundupChoice(None, f"no new round-up {window}: {recent[0].title!r} was already sent in {sent}")


def pick_teasers(
    entries: Iterable[FeedEntry],
    rules: TeaserSource,
    as_of: dt.datetime,
    history: History,
    roundup: FeedEntry | None,
) -> list[FeedEntry]:
    """The newest ``rules.count`` items in the window and the wanted sections, each once."""
    include = {" ".join(s.split()).casefold() for s in rules.include_sections}
    exclude = {" ".join(s.split()).casefold() for s in rules.exclude_sections}
    seen_guids: set[str] = set()
    seen_urls: set[str] = set()
    if roundup is not None:
        if roundup.guid:
            seen_guids.add(roundup.guid)
        seen_urls.add(canonical_url(roundup.link))
    chosen: list[FeedEntry] = []
    for entry in newest_first(entries):
        if len(chosen) >= rules.count:
            break
        url = canonical_url(entry.link)
        if (entry.guid and entry.guid in seen_guids) or url in seen_urls:
            continue
        if not in_window(entry, as_of, rules.max_age_days):
            continue
        if include and not entry.in_any_section(include):
            continue
        if exclude and entry.in_any_section(exclude):
            continue
        if history.sent_in(entry) is not None:
            continue
        chosen.append(entry)
        if entry.guid:
            seen_guids.add(entry.guid)
        seen_urls.add(url)
    return chosen
