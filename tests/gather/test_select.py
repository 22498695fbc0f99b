"""Selection at the fixtures' as-of time (2024-10-25T21:00Z): the round-up, the teasers,
history from sent issues, deduplication, sections, and every trap in the fixture feeds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from newsletter import issuefile
from newsletter.config import Settings
from newsletter.errors import NoRoundupError
from newsletter.gather import gather_issue
from newsletter.gather.select import canonical_url
from newsletter.models import Issue, Roundup, Teaser

from .conftest import AS_OF

LAST_WEEK_TEASER = "https://news.example.org/long-range-analysis"


def titles(issue: Issue) -> list[str]:
    return [t.title for t in issue.teasers]


def write_sent_issue(
    issues_dir: Path,
    *,
    teaser_url: str = LAST_WEEK_TEASER,
    guid: str | None = "sr-2669470002",
    roundup: Roundup | None = None,
    slug: str = "2024-10-18",
) -> Path:
    issue = Issue(
        slug=slug,
        date=dt.date.fromisoformat(slug),
        subject="Last week",
        status="sent",
        sent_at=dt.datetime(2024, 10, 18, 21, tzinfo=dt.UTC),
        roundup=roundup,
        teasers=[Teaser(title="Allies weigh long-range weapons", url=teaser_url, guid=guid)],
    )
    path = issuefile.path_for(issues_dir, slug)
    issuefile.save(issue, path)
    return path


def test_the_roundup_is_the_newest_diplomacy_watch_in_the_window(settings: Settings) -> None:
    roundup = gather_issue(settings, AS_OF).issue.roundup
    assert roundup is not None
    assert roundup.title == "Diplomacy Watch: Kyiv and its partners strain as the front heats up"
    assert roundup.url == "https://news.example.org/diplomacy-watch-north-korea-troops"
    assert roundup.guid == "sr-2669474413"
    assert roundup.published == dt.datetime(2024, 10, 25, 20, 30, tzinfo=dt.UTC)
    assert roundup.author == "Staff Reporter"
    assert roundup.label == "Diplomacy Watch"  # sources.roundup.label in config.yaml
    assert roundup.dek.startswith("Word that North Korean soldiers are in Russia")
    assert roundup.image is not None
    assert roundup.image.src == "https://assets.news.example.org/media/ukraine-war-2024-10.jpg"
    assert roundup.image.credit == "Shutterstock / Example Photographer"
    assert roundup.image.alt == "Soldiers on a training ground in eastern Ukraine"  # media:title
    assert (roundup.image.width, roundup.image.height) == (1200, 800)


def test_the_roundup_body_is_full_and_clean(settings: Settings) -> None:
    body = gather_issue(settings, AS_OF).issue.roundup.body_html  # type: ignore[union-attr]
    assert "<h2>Other Ukraine news this week</h2>" in body
    assert "<h2>From the State Department briefing on Oct. 22</h2>" in body
    assert "<script" not in body and "trackReader" not in body and "pixel.tracker" not in body
    assert "utm_" not in body  # the renderer adds UTM parameters, not gather


def test_subject_preheader_slug_and_date(settings: Settings) -> None:
    issue = gather_issue(settings, AS_OF).issue
    assert issue.slug == "2024-10-25" and issue.date == dt.date(2024, 10, 25)
    assert issue.subject == "Diplomacy Watch: Kyiv and its partners strain as the front heats up"
    assert issue.preheader.startswith("Word that North Korean soldiers")
    assert len(issue.preheader) <= 150
    assert issue.status == "draft"


def test_the_slug_is_the_date_in_the_publications_time_zone(settings: Settings) -> None:
    # 02:00 UTC on the 26th is still the evening of the 25th in New York.
    late = dt.datetime(2024, 10, 26, 2, 0, tzinfo=dt.UTC)
    assert gather_issue(settings, late).issue.slug == "2024-10-25"


def test_teasers_without_history(settings: Settings) -> None:
    issue = gather_issue(settings, AS_OF).issue
    assert titles(issue) == [
        "The new security strategy runs on rare earths and fossil fuels",
        'Think-tank experts, funded by oil and arms makers, say "go big" in Venezuela',
        'Ukraine\'s own pragmatism argues for "armed non-alignment"',
        "Five questions about the G7 loan & frozen assets",
        "Allies weigh long-range weapons as talks stall (analysis)",
    ]


def test_the_teaser_sent_last_week_is_left_out(settings: Settings) -> None:
    write_sent_issue(settings.issues_dir)
    issue = gather_issue(settings, AS_OF).issue
    assert len(issue.teasers) == 4
    assert LAST_WEEK_TEASER not in [t.url for t in issue.teasers]


def test_history_matches_by_canonical_url_when_guids_differ(settings: Settings) -> None:
    write_sent_issue(
        settings.issues_dir, teaser_url=LAST_WEEK_TEASER + "?utm_source=newsletter&fbclid=x#top", guid=None
    )
    assert LAST_WEEK_TEASER not in [t.url for t in gather_issue(settings, AS_OF).issue.teasers]


def test_only_sent_issues_count_as_history(settings: Settings) -> None:
    path = write_sent_issue(settings.issues_dir)
    draft = issuefile.load(path).model_copy(update={"status": "draft"})
    issuefile.save(draft, path)
    assert len(gather_issue(settings, AS_OF).issue.teasers) == 5


def test_an_unreadable_issue_file_is_a_warning_not_a_failure(settings: Settings) -> None:
    (settings.issues_dir / "2024-10-11.yaml").write_text("slug: [unclosed\n", encoding="utf-8")
    result = gather_issue(settings, AS_OF)
    assert len(result.warnings) == 1 and "2024-10-11.yaml" in result.warnings[0]
    assert "left out of the sent history" in result.warnings[0]


def test_the_roundup_is_never_a_teaser_and_old_items_are_out(settings: Settings) -> None:
    urls = [t.url for t in gather_issue(settings, AS_OF).issue.teasers]
    assert "https://news.example.org/diplomacy-watch-north-korea-troops" not in urls
    assert "https://news.example.org/old-piece" not in urls


def test_the_podcast_in_the_roundup_feed_is_never_the_roundup(settings: Settings) -> None:
    # A day earlier the podcast is the newest item of the round-up feed; last week's
    # Diplomacy Watch is still inside the window and is the one chosen.
    earlier = dt.datetime(2024, 10, 24, 16, 0, tzinfo=dt.UTC)
    roundup = gather_issue(settings, earlier).issue.roundup
    assert roundup is not None
    assert roundup.title == "Diplomacy Watch: Allies weigh long-range weapons as talks stall"
    # No media:title or description: decorative (alt=""), never the title repeated.
    assert roundup.image is not None and roundup.image.alt == ""


def test_relative_urls_are_resolved_against_xml_base(settings: Settings) -> None:
    teaser = next(t for t in gather_issue(settings, AS_OF).issue.teasers if "non-alignment" in t.title)
    assert teaser.url == "https://news.example.org/europe/armed-non-alignment"
    assert teaser.image is not None and teaser.image.src == "https://news.example.org/media/assault-training.jpg"


def test_non_ascii_survives(settings: Settings) -> None:
    teaser = next(t for t in gather_issue(settings, AS_OF).issue.teasers if "non-alignment" in t.title)
    assert teaser.author == "Контрибутор Зеленський"
    assert teaser.excerpt.endswith("🇺🇦 — «нейтралітет»")
    assert teaser.section == "Europe"


def test_the_teaser_without_image_and_with_traps(settings: Settings) -> None:
    teaser = next(t for t in gather_issue(settings, AS_OF).issue.teasers if "G7" in t.title)
    assert teaser.image is None  # the 1x1 tracking pixel is not an image
    assert teaser.excerpt == "No image on this one: the teaser must still look right. Click here or read on."
    assert teaser.title == "Five questions about the G7 loan & frozen assets"


def test_teaser_sections_use_the_human_label(settings: Settings) -> None:
    sections = [t.section for t in gather_issue(settings, AS_OF).issue.teasers]
    assert sections[:2] == ["Washington Politics", "Military Industrial Complex"]


def test_count_and_excerpt_length(gather_settings: Callable[..., Settings], project: Path) -> None:
    settings = gather_settings(
        {
            "roundup": {"feed": str(project / "samples/feeds/roundup.rss")},
            "teasers": {"feeds": [str(project / "samples/feeds/latest.atom")], "count": 2, "excerpt_words": 5},
        }
    )
    issue = gather_issue(settings, AS_OF).issue
    assert len(issue.teasers) == 2
    assert issue.teasers[0].excerpt == "The strategy document seeks stable…"


@pytest.mark.parametrize(
    ("teasers", "expected"),
    [
        (
            {"include_sections": ["europe", "Economy"]},
            ["armed-non-alignment", "g7-loan-questions", "long-range-analysis"],
        ),
        (
            {"exclude_sections": ["Europe"]},
            ["security-strategy-rare-earths", "think-tank-venezuela", "g7-loan-questions"],
        ),
        ({"max_age_days": 2}, ["security-strategy-rare-earths", "think-tank-venezuela", "armed-non-alignment"]),
    ],
)
def test_section_and_age_rules(
    gather_settings: Callable[..., Settings], project: Path, teasers: dict[str, object], expected: list[str]
) -> None:
    settings = gather_settings(
        {
            "roundup": {"feed": str(project / "samples/feeds/roundup.rss")},
            "teasers": {"feeds": [str(project / "samples/feeds/latest.atom")], **teasers},
        }
    )
    urls = [t.url.rsplit("/", 1)[1] for t in gather_issue(settings, AS_OF).issue.teasers]
    assert urls == expected


def test_roundup_label_and_category_match_from_config(gather_settings: Callable[..., Settings], project: Path) -> None:
    settings = gather_settings(
        {
            "roundup": {
                "feed": str(project / "samples/feeds/roundup.rss"),
                "match": {"category": "Diplomacy Watch", "title_regex": r"^Diplomacy Watch: Kyiv"},
                "label": "Diplomacy Watch",
            },
            "teasers": {"feeds": []},
        }
    )
    issue = gather_issue(settings, AS_OF).issue
    assert issue.roundup is not None and issue.roundup.label == "Diplomacy Watch"
    assert issue.roundup.guid == "sr-2669474413" and issue.teasers == []


def test_excerpt_body_instead_of_full(gather_settings: Callable[..., Settings], project: Path) -> None:
    settings = gather_settings(
        {
            "roundup": {"feed": str(project / "samples/feeds/roundup.rss"), "body": "excerpt"},
            "teasers": {"feeds": []},
        },
        templates={"roundup_excerpt_words": 8},
    )
    body = gather_issue(settings, AS_OF).issue.roundup.body_html  # type: ignore[union-attr]
    assert body == "<p>The week turned on one confirmation: the U.S.…</p>"


def test_a_roundup_already_sent_is_no_new_roundup(settings: Settings) -> None:
    sent = Roundup(
        title="Diplomacy Watch: Kyiv",
        url="https://news.example.org/diplomacy-watch-north-korea-troops",
        guid="sr-2669474413",
    )
    path = write_sent_issue(settings.issues_dir, roundup=sent, slug="2024-10-24")
    with pytest.raises(NoRoundupError, match=rf"already sent in {path}; skipping this week"):
        gather_issue(settings, AS_OF)


def test_no_roundup_in_the_window_skips_the_week(settings: Settings) -> None:
    later = dt.datetime(2024, 11, 5, 12, 0, tzinfo=dt.UTC)
    with pytest.raises(NoRoundupError) as err:
        gather_issue(settings, later)
    message = str(err.value)
    assert message.startswith(f"{settings.sources.roundup.feed}: no round-up in the 7 days before")  # type: ignore[union-attr]
    assert "the newest, 'Diplomacy Watch: Kyiv and its partners strain as the front heats up', is 2024-10-25" in message


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("https://News.Example.org/a?utm_source=x&utm_medium=email&id=3#frag", "https://news.example.org/a?id=3"),
        ("https://news.example.org:443/a?fbclid=1&gclid=2&mc_cid=3&mc_eid=4", "https://news.example.org/a"),
        ("http://news.example.org", "http://news.example.org/"),
        ("https://news.example.org/a?page=2&ref=home", "https://news.example.org/a?page=2&ref=home"),
    ],
)
def test_canonical_urls_drop_tracking(url: str, canonical: str) -> None:
    assert canonical_url(url) == canonical
