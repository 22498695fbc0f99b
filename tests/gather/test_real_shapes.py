"""Gather on the shapes real feeds have (fixtures written for these tests): a FeedBurner-
style Portuguese feed (a newline before ``<?xml``, ``~r`` links with ``origLink``, feed
flares, avatars, hidden pixels, images without alt, http on the publisher's host,
localized dates, an unreadable date) and a forum-style Atom feed (HTML escaped twice, a
10 KB title, an entry without a link, a redirect before the real alternate link)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from newsletter.config import Settings
from newsletter.errors import NoRoundupError
from newsletter.gather import GatherResult, gather_issue
from newsletter.models import Teaser

AS_OF = dt.datetime(2024, 10, 25, 21, 0, tzinfo=dt.UTC)
FEEDBURNER = "feeds/feedburner.rss"
FORUM = "feeds/forum.atom"
SITE = "https://www.observatorio.example.org"


@pytest.fixture
def gather(fixtures_dir: Path, gather_settings: Callable[..., Settings]) -> Callable[..., GatherResult]:
    def run(roundup: str = FEEDBURNER, teasers: tuple[str, ...] = (FEEDBURNER, FORUM), **sources: Any) -> GatherResult:
        settings = gather_settings(
            {
                "roundup": {"feed": str(fixtures_dir / roundup)},
                "teasers": {"feeds": [str(fixtures_dir / t) for t in teasers], "count": 10},
                "https_domains": ["observatorio.example.org"],
                **sources,
            }
        )
        return gather_issue(settings, AS_OF)

    return run


def teaser(result: GatherResult, title_start: str) -> Teaser:
    return next(t for t in result.issue.teasers if t.title.startswith(title_start))


def test_a_newline_before_the_declaration_and_localized_dates_are_forgiven(
    gather: Callable[..., GatherResult], fixtures_dir: Path
) -> None:
    result = gather()
    roundup = result.issue.roundup
    assert roundup is not None and roundup.title == "Diplomacy Watch: Acordo em Genebra"
    # "Sex, 25 Out 2024 10:30:00 -0300" is Friday 25 October, 13:30 UTC.
    assert roundup.published == dt.datetime(2024, 10, 25, 13, 30, tzinfo=dt.UTC)
    assert teaser(result, "Cúpula").published == dt.datetime(2024, 10, 24, 12, 0, tzinfo=dt.UTC)
    source = str(fixtures_dir / FEEDBURNER)
    assert f"{source}: 1 byte of whitespace before the XML declaration ignored" in result.notes


def test_an_unreadable_date_leaves_the_item_out_and_says_so(
    gather: Callable[..., GatherResult], fixtures_dir: Path
) -> None:
    result = gather()
    assert not any(t.title.startswith("Uma data") for t in result.issue.teasers)
    assert (
        f"{fixtures_dir / FEEDBURNER}: left out 'Uma data que ninguém lê': its date "
        "'Sexta, 32 Foo 2024 25:99:00 -0300' cannot be read"
    ) in result.notes


def test_feedburner_redirects_give_way_to_the_original_links(gather: Callable[..., GatherResult]) -> None:
    result = gather()
    assert result.issue.roundup is not None
    assert result.issue.roundup.url == f"{SITE}/2024/10/acordo-em-genebra/"  # origLink, made https
    assert teaser(result, "Cúpula").url == f"{SITE}/2024/10/cupula-do-clima/"
    assert teaser(result, "Protestos").url == f"{SITE}/2024/10/protestos-em-lisboa/"  # atom:link
    assert teaser(result, "Talks").url == "https://forum.example.net/r/worldnews/comments/jkl012/talks/"
    for item in result.issue.teasers:
        assert "feedburner" not in item.url and "feedproxy" not in item.url


def test_http_is_upgraded_only_on_the_configured_hosts(
    gather: Callable[..., GatherResult],
) -> None:
    upgraded = gather()
    as_served = gather(https_domains=[])
    assert upgraded.issue.roundup is not None and as_served.issue.roundup is not None
    assert upgraded.issue.roundup.url.startswith("https://") and "http://" not in upgraded.issue.roundup.body_html
    assert as_served.issue.roundup.url == "http://www.observatorio.example.org/2024/10/acordo-em-genebra/"
    assert 'src="http://www.observatorio.example.org/' in as_served.issue.roundup.body_html


def test_the_lead_image_is_one_a_reader_would_choose(gather: Callable[..., GatherResult]) -> None:
    result = gather()
    roundup = result.issue.roundup
    assert roundup is not None and roundup.image is not None
    # Not the 40 px avatar, not a feed flare, not a hidden pixel: the 1200 px photo, with
    # its figure caption as alt text and its declared size.
    assert roundup.image.src == f"{SITE}/wp-content/uploads/genebra-1200.jpg"
    assert roundup.image.alt == "Delegações no Palácio das Nações"
    assert (roundup.image.width, roundup.image.height) == (1200, 800)


def test_declared_media_widest_first_with_an_alt_that_is_not_the_title(gather: Callable[..., GatherResult]) -> None:
    image = teaser(gather(), "Protestos").image
    assert image is not None
    assert image.src == f"{SITE}/wp-content/uploads/lisboa-1024.jpg"  # not the 150 px thumbnail
    assert image.alt == "Manifestantes na Praça do Comércio, em Lisboa"  # media:title is the title
    assert (image.width, image.height, image.credit) == (1024, 683, "Foto: Agência Exemplo")


def test_only_small_images_means_no_teaser_image(gather: Callable[..., GatherResult]) -> None:
    # A 72 px media:thumbnail, a 30 px avatar and a feed flare: nothing worth 600 px.
    assert teaser(gather(), "Cúpula").image is None


def test_min_image_width_is_configurable(fixtures_dir: Path, gather_settings: Callable[..., Settings]) -> None:
    settings = gather_settings(
        {
            "roundup": {"feed": str(fixtures_dir / FEEDBURNER)},
            "teasers": {"feeds": [str(fixtures_dir / FEEDBURNER)], "count": 10},
        },
        templates={"min_image_width": 50},
    )
    result = gather_issue(settings, AS_OF)
    image = teaser(result, "Cúpula").image
    assert image is not None and image.width == 72


def test_the_body_keeps_content_images_with_alt_and_loses_flares_and_pixels(
    gather: Callable[..., GatherResult],
) -> None:
    roundup = gather().issue.roundup
    assert roundup is not None
    body = roundup.body_html
    for gone in ("feedburner", "hidden.gif", "px.gif", "px2.gif", "style=", "feedflare"):
        assert gone not in body
    assert f'<img src="{SITE}/wp-content/uploads/mapa.png" alt="">' in body  # decorative
    assert 'alt="Delegações no Palácio das Nações" width="1200"' in body  # its caption
    assert "<a" not in body.replace('<a href="https://www.observatorio.example.org/tag/genebra/"', "")


def test_double_escaped_html_is_read_once(gather: Callable[..., GatherResult]) -> None:
    item = teaser(gather(), "Ministers meet")
    assert item.excerpt == "Ministers met in Geneva on Friday."


def test_a_10_kb_title_is_cut_at_a_word_for_headings_too(gather: Callable[..., GatherResult]) -> None:
    item = teaser(gather(), "Breaking analysis")
    assert len(item.title) <= 200 and item.title.endswith("…")
    assert item.title[:-1].split()[-1] in [
        "Breaking",
        "analysis",
        "of",
        "the",
        "ceasefire",
        "negotiations",
        "and",
        "what",
        "each",
        "delegation",
        "said",
    ]


def test_the_title_limit_is_configurable(gather: Callable[..., GatherResult]) -> None:
    item = teaser(gather(max_title_chars=40), "Breaking analysis")
    assert item.title == "Breaking analysis of the ceasefire…"


def test_a_round_up_without_a_link_is_named_as_such(gather: Callable[..., GatherResult], fixtures_dir: Path) -> None:
    with pytest.raises(NoRoundupError) as err:
        gather(roundup=FORUM)
    assert str(err.value) == (
        f"{fixtures_dir / FORUM}: the round-up 'Diplomacy Watch: a post that lost its link' was "
        "left out: it has no usable link (no http or https address); skipping this week "
        "(sources.no_roundup: skip)"
    )
