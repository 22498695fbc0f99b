"""gather_issue against feeds served over HTTP: the shared fixtures, a failing teaser feed
(fail or warn), no round-up (skip or teasers only), and write_draft's overwrite rules."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from newsletter import issuefile
from newsletter.config import Settings
from newsletter.errors import FeedError, IssueKeptError, NoRoundupError
from newsletter.gather import gather_issue, parse_as_of, write_draft

from .conftest import AS_OF, FeedServer
from .feedmaker import rss, rss_item

PODCAST_ONLY = rss(
    rss_item(
        "Podcast: What a ceasefire line could look like",
        "https://news.example.org/podcast-ceasefire-line",
        guid="sr-2669474500",
        published="Thu, 24 Oct 2024 15:00:00 +0000",
    )
)


def test_gathers_over_http(served_settings: Callable[..., Settings], feed_server: FeedServer) -> None:
    result = gather_issue(served_settings(), AS_OF)
    assert result.warnings == []
    assert result.issue.roundup is not None and len(result.issue.teasers) == 5
    assert {s.path for s in feed_server.seen} == {"/feeds/diplomacy-watch.rss", "/feeds/latest.atom"}


def test_a_feed_named_twice_is_fetched_once(served_settings: Callable[..., Settings], feed_server: FeedServer) -> None:
    settings = served_settings(teasers={"feeds": [feed_server.url("/feeds/latest.atom")] * 2})
    assert len(gather_issue(settings, AS_OF).issue.teasers) == 5
    assert [s.path for s in feed_server.seen].count("/feeds/latest.atom") == 1


def test_a_second_run_revalidates_with_the_cache(
    served_settings: Callable[..., Settings], feed_server: FeedServer, roundup_xml: bytes
) -> None:
    feed_server.add("/feeds/diplomacy-watch.rss", roundup_xml, etag='"w1"')
    settings = served_settings()
    first = gather_issue(settings, AS_OF).issue
    second = gather_issue(settings, AS_OF).issue
    assert first == second
    revalidated = [s for s in feed_server.seen if s.path == "/feeds/diplomacy-watch.rss"][1]
    assert revalidated.headers["if-none-match"] == '"w1"'


def test_a_failing_teaser_feed_warns_and_goes_on(
    served_settings: Callable[..., Settings], feed_server: FeedServer
) -> None:
    broken = feed_server.add("/feeds/broken.atom", b"", status=500, content_type="text/plain")
    settings = served_settings(
        teasers={"feeds": [broken, feed_server.url("/feeds/latest.atom")], "on_feed_error": "warn"}
    )
    result = gather_issue(settings, AS_OF)
    assert len(result.issue.teasers) == 5
    assert result.warnings == [f"{broken}: HTTP 500 Internal Server Error; gathered without this teaser feed"]


def test_a_failing_teaser_feed_can_fail_the_gather(
    served_settings: Callable[..., Settings], feed_server: FeedServer
) -> None:
    broken = feed_server.add("/feeds/broken.atom", "<feed><entry>", content_type="application/atom+xml")
    settings = served_settings(teasers={"feeds": [broken], "on_feed_error": "fail"})
    with pytest.raises(FeedError, match=rf"^{broken}: malformed XML"):
        gather_issue(settings, AS_OF)


def test_a_failing_roundup_feed_always_fails(served_settings: Callable[..., Settings], feed_server: FeedServer) -> None:
    feed_server.add("/feeds/diplomacy-watch.rss", b"", status=503, content_type="text/plain")
    with pytest.raises(FeedError, match=r"diplomacy-watch\.rss: HTTP 503 Service Unavailable$"):
        gather_issue(served_settings(), AS_OF)


def test_no_matching_roundup_skips_the_week(served_settings: Callable[..., Settings], feed_server: FeedServer) -> None:
    url = feed_server.add("/feeds/diplomacy-watch.rss", PODCAST_ONLY)
    with pytest.raises(NoRoundupError) as err:
        gather_issue(served_settings(), AS_OF)
    assert str(err.value) == (
        f"{url}: no item matches title_prefix 'Diplomacy Watch:'; skipping this week (sources.no_roundup: skip)"
    )
    assert err.value.exit_code == 3


def test_no_matching_roundup_can_send_teasers_only(
    served_settings: Callable[..., Settings], feed_server: FeedServer
) -> None:
    feed_server.add("/feeds/diplomacy-watch.rss", PODCAST_ONLY)
    result = gather_issue(served_settings(no_roundup="teasers_only"), AS_OF)
    assert result.issue.roundup is None and len(result.issue.teasers) == 5
    # The newest teaser leads: here the latest feed's copy of the week's Diplomacy Watch.
    assert result.issue.subject == f"Statecraft Review: {result.issue.teasers[0].title}"
    assert "this issue has teasers only" in result.warnings[0]


def test_teasers_only_with_nothing_new_is_still_no_issue(
    served_settings: Callable[..., Settings], feed_server: FeedServer
) -> None:
    feed_server.add("/feeds/diplomacy-watch.rss", PODCAST_ONLY)
    with pytest.raises(NoRoundupError, match="no teasers are new this week either"):
        gather_issue(served_settings(no_roundup="teasers_only"), dt.datetime(2025, 1, 1, tzinfo=dt.UTC))


def test_an_as_of_without_offset_is_in_the_publications_zone(settings: Settings) -> None:
    zone = settings.zone
    assert parse_as_of("2024-10-25T17:00", zone) == dt.datetime(2024, 10, 25, 21, 0, tzinfo=dt.UTC)
    assert parse_as_of("2024-10-25T21:00:00Z", zone) == AS_OF
    assert parse_as_of("2024-10-25", zone).astimezone(zone).time() == dt.time(23, 59, 59)
    with pytest.raises(ValueError, match="not an ISO 8601"):
        parse_as_of("last friday", zone)


# -- write_draft ---------------------------------------------------------------------


@pytest.fixture
def fresh(settings: Settings) -> Settings:
    """The project's settings with the hand-written example issue moved out of the way."""
    (settings.issues_dir / "2024-10-25.yaml").unlink(missing_ok=True)
    return settings


def test_write_draft_writes_a_stamped_loadable_draft(fresh: Settings) -> None:
    issue = gather_issue(fresh, AS_OF).issue
    path = write_draft(fresh, issue)
    assert path == fresh.issues_dir / "2024-10-25.yaml"
    saved = issuefile.load(path)
    assert saved.gathered is not None and not issuefile.edited_since_gathered(saved)
    assert saved.model_dump(exclude={"gathered"}) == issue.model_dump(exclude={"gathered"})


def test_an_untouched_draft_is_replaced_by_a_new_gather(fresh: Settings) -> None:
    path = write_draft(fresh, gather_issue(fresh, AS_OF).issue)
    assert write_draft(fresh, gather_issue(fresh, AS_OF).issue) == path


@pytest.mark.parametrize("change", ["edited", "approved", "sent", "hand-written", "broken"])
def test_an_editors_issue_is_not_replaced_without_force(fresh: Settings, change: str) -> None:
    issue = gather_issue(fresh, AS_OF).issue
    path = write_draft(fresh, issue)
    saved = issuefile.load(path)
    if change == "edited":
        issuefile.save(saved.model_copy(update={"intro": "A note from the editor."}), path)
    elif change == "hand-written":
        issuefile.save(saved.model_copy(update={"gathered": None}), path)
    elif change == "broken":
        path.write_text("subject: [", encoding="utf-8")
    else:
        issuefile.save(saved.model_copy(update={"status": change}), path)
    before = path.read_bytes()
    with pytest.raises(IssueKeptError, match=r"; not replaced$") as err:  # the caller names its override
        write_draft(fresh, issue)
    assert str(err.value).startswith(f"{path}: ") and err.value.path == path
    assert (
        err.value.reason
        == {
            "edited": "edited since it was gathered",
            "approved": "the issue is approved",
            "sent": "the issue is sent",
            "hand-written": "not written by gather (it has no gathered: record)",
            "broken": "line 1, column 11: expected the node content, but found '<stream end>'",
        }[change]
    )
    assert path.read_bytes() == before
    write_draft(fresh, issue, force=True)
    assert issuefile.load(path).status == "draft"


def test_out_writes_elsewhere(fresh: Settings, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "draft.yaml"
    assert write_draft(fresh, gather_issue(fresh, AS_OF).issue, out) == out
    assert issuefile.load(out).slug == "2024-10-25"
