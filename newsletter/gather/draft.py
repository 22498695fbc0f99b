"""The draft issue: chosen feed entries turned into a ``Roundup`` and ``Teaser``s with clean
HTML and text, an ``Issue`` dated in the publication's time zone, and the rules for writing
it to ``issues/<slug>.yaml`` without clobbering an editor's work.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

from pydantic import ValidationError

from newsletter import issuefile
from newsletter.config import Settings
from newsletter.errors import IssueFileError, IssueKeptError
from newsletter.gather.extract import FeedEntry, FeedImage, first_real_image
from newsletter.models import Image, Issue, Roundup, Teaser
from newsletter.sanitize import cut_words, html_to_text, sanitize_html

DEK_WORDS = 60  # a dek is a sentence or two; longer summaries are cut
PREHEADER_CHARS = 150  # what inbox previews show, roughly
SUBJECT_CHARS = 200  # the Issue model's limit


def _image(image: FeedImage | None, title: str = "") -> Image | None:
    if image is None:
        return None
    try:
        return Image(  # alt that repeats the title beside it would be read twice: none instead
            src=image.src,
            alt="" if image.alt == title else image.alt,
            credit=image.credit,
            width=image.width,
            height=image.height,
        )
    except ValidationError:
        return None


def _best_image(entry: FeedEntry, settings: Settings, *clean_html: str) -> Image | None:
    """The declared image, else the first body image a reader would choose; none when
    only share buttons, pixels or small images (templates.min_image_width) are there."""
    if entry.image is not None:
        return _image(entry.image, entry.title)
    for fragment in clean_html:
        found = first_real_image(fragment, entry.title, settings.templates.min_image_width)
        if found is not None:
            return _image(found, entry.title)
    return None


def _https_hosts(settings: Settings) -> list[str]:
    return settings.sources.https_domains if settings.sources is not None else []


def make_roundup(entry: FeedEntry, settings: Settings) -> Roundup:
    """The lead piece: full sanitized body, or an excerpt when ``sources.roundup.body`` says so."""
    assert settings.sources is not None
    rules = settings.sources.roundup
    body_source = entry.content_html or entry.summary_html
    clean_body = sanitize_html(body_source, entry.base_url, _https_hosts(settings))
    summary_text = html_to_text(entry.summary_html)
    dek = cut_words(summary_text, DEK_WORDS) if summary_text else ""
    if rules.body == "excerpt":
        text = cut_words(html_to_text(clean_body), settings.templates.roundup_excerpt_words)
        body_html = sanitize_html(f"<p>{_escape(text)}</p>", entry.base_url) if text else ""
    else:
        body_html = clean_body
    return Roundup(
        title=entry.title,
        url=entry.link,
        dek=dek,
        label=rules.label or (entry.sections[0] if entry.sections else ""),
        author=entry.author,
        published=entry.published,
        guid=entry.guid,
        image=_best_image(entry, settings, clean_body),
        body_html=body_html,
    )


def make_teaser(entry: FeedEntry, settings: Settings) -> Teaser:
    assert settings.sources is not None
    words = settings.sources.teasers.excerpt_words
    hosts = _https_hosts(settings)
    clean = sanitize_html(entry.summary_html or entry.content_html, entry.base_url, hosts)
    excerpt = cut_words(html_to_text(clean), words)
    bodies = [sanitize_html(entry.content_html, entry.base_url, hosts)] if entry.content_html else []
    return Teaser(
        title=entry.title,
        url=entry.link,
        section=entry.sections[0] if entry.sections else "",
        author=entry.author,
        published=entry.published,
        guid=entry.guid,
        image=_best_image(entry, settings, *bodies, clean),
        excerpt=excerpt,
    )


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def make_issue(
    settings: Settings,
    as_of: dt.datetime,
    roundup: FeedEntry | None,
    teasers: list[FeedEntry],
) -> Issue:
    """The draft, dated by the as-of time in the publication's own time zone."""
    day = as_of.astimezone(settings.zone).date()
    lead = make_roundup(roundup, settings) if roundup is not None else None
    items = [make_teaser(entry, settings) for entry in teasers]
    if lead is not None:
        subject = lead.title
        preheader = lead.dek
    else:
        # Teasers only: name the publication and lead with the newest story.
        subject = f"{settings.publication.name}: {items[0].title}"
        preheader = items[0].excerpt
    return Issue(
        slug=day.isoformat(),
        date=day,
        subject=cut_words(" ".join(subject.split()), 999, SUBJECT_CHARS),
        preheader=cut_words(preheader, 999, PREHEADER_CHARS),
        roundup=lead,
        teasers=items,
    )


def write_draft(
    settings: Settings,
    issue: Issue,
    out: Path | None = None,
    force: bool = False,
    *,
    now: dt.datetime | None = None,
) -> Path:
    """Save ``issue`` (stamped as gathered) to ``out`` or ``issues/<slug>.yaml``, atomically.

    An existing file that is approved, sent, edited since it was gathered, or unreadable is
    left alone unless ``force`` (``IssueKeptError``): it is an editor's work, not gather's.
    """
    path = out if out is not None else issuefile.path_for(settings.issues_dir, issue.slug)
    if path.exists() and not force:
        try:
            existing = issuefile.load(path)
        except IssueFileError as exc:
            raise IssueKeptError(path, str(exc).removeprefix(f"{path}: ")) from None
        if existing.status != "draft":
            raise IssueKeptError(path, f"the issue is {existing.status}")
        if existing.gathered is None:
            raise IssueKeptError(path, "not written by gather (it has no gathered: record)")
        if issuefile.edited_since_gathered(existing):
            raise IssueKeptError(path, "edited since it was gathered")
    stamped = issuefile.stamp_gathered(issue, now or dt.datetime.now(dt.UTC))
    issuefile.save(stamped, path)
    return path
