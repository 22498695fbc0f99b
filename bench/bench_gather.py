"""Benchmark: gathering from two local feeds of 500 items each (RSS 2.0 and Atom, with
realistic HTML bodies): parse + extract + sanitize + select (+ compose the Issue), in-process.

    .venv/bin/python bench/bench_gather.py [--runs 15] [--items 500]

Prints the median of N runs of ``gather_issue`` (files are read from a temporary folder;
no network), and, apart, the cost of sanitizing every item's body, which gather does not
do (it sanitizes only what it selects). Target (issue 3): <= 0.5 s.

Then the same for one long archive feed: 730 daily items in 1.6 MB, shaped like a
FeedBurner feed (Portuguese RFC 822 dates, ~r links with origLink, feed flares, avatars,
a hidden pixel): the round-up and the teasers both come from it. Target (issue 12):
<= 1.5 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from newsletter.config import Settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_SECONDS = 0.5
ARCHIVE_TARGET_SECONDS = 1.5
PT_DAYS = ["Seg", "Ter", "Qua", "Qui", "Sex", "Sáb", "Dom"]
PT_MONTHS = ["Jan", "Fev", "Mar", "Abr", "Mai", "Jun", "Jul", "Ago", "Set", "Out", "Nov", "Dez"]
AS_OF = dt.datetime(2024, 10, 25, 21, 0, tzinfo=dt.UTC)
SECTIONS = ["Europe", "Asia", "Economy", "Washington Politics", "Military Industrial Complex", "Africa"]
WORDS = [
    "diplomacy",
    "ceasefire",
    "sanctions",
    "negotiations",
    "summit",
    "ministry",
    "alliance",
    "embassy",
    "treaty",
    "security",
    "strategy",
    "council",
    "envoy",
    "deterrence",
    "arms",
    "frontline",
    "reconstruction",
    "Kyiv",
    "Brussels",
    "Washington",
    "Beijing",
    "assessment",
    "officials",
    "briefing",
    "délégation",
    "«переговори»",
    "budget",
]


def paragraph(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."
    return html.escape(text)


def body(rng: random.Random, n: int) -> str:
    parts = [f'<p>{paragraph(rng, 60)} <a href="/related/{n}?utm_source=feed">Related</a>.</p>' for _ in range(8)]
    parts.insert(
        2,
        f'<figure><img src="media/{n}.jpg" alt="Photo {n}" width="1200" height="800">'
        "<figcaption>Photo: Example Agency</figcaption></figure>",
    )
    parts.insert(
        5,
        f"<h2>{paragraph(rng, 5)}</h2><ul>"
        + "".join(f"<li><strong>Point.</strong> {paragraph(rng, 25)}</li>" for _ in range(4))
        + "</ul><blockquote><p>"
        + paragraph(rng, 20)
        + "</p></blockquote>",
    )
    parts.append(
        f"<script>track({n})</script>"
        '<img src="https://pixel.tracker.example.net/o.gif" width="1" height="1">'
        '<p onclick="x()">Share <a href="javascript:void(0)">this</a>.</p>'
    )
    return "\n".join(parts)


def when(i: int) -> dt.datetime:
    return AS_OF - dt.timedelta(hours=3 * i + 1)


def make_rss(rng: random.Random, items: int) -> str:
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:media="http://search.yahoo.com/mrss/">',
        "<channel><title>Bench: Diplomacy Watch</title><link>https://news.example.org/</link>",
    ]
    for i in range(items):
        title = f"Diplomacy Watch: week {i}" if i % 7 == 0 else f"Article {i}: {paragraph(rng, 8)}"
        out.append(
            f"<item><title>{title}</title><link>https://news.example.org/rss/{i}</link>"
            f'<guid isPermaLink="false">rss-{i}</guid>'
            f"<pubDate>{when(i):%a, %d %b %Y %H:%M:%S +0000}</pubDate>"
            f"<dc:creator>Reporter {i % 13}</dc:creator><category>{rng.choice(SECTIONS)}</category>"
            f'<media:content url="https://assets.news.example.org/{i}.jpg" medium="image" width="1200" height="800">'
            f"<media:title>Photo {i}</media:title><media:credit>Agency {i % 5}</media:credit></media:content>"
            f"<description><![CDATA[<p>{paragraph(rng, 40)}</p>]]></description>"
            f"<content:encoded><![CDATA[{body(rng, i)}]]></content:encoded></item>"
        )
    out.append("</channel></rss>")
    return "\n".join(out)


def make_atom(rng: random.Random, items: int) -> str:
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<feed xmlns="http://www.w3.org/2005/Atom" xmlns:media="http://search.yahoo.com/mrss/" '
        'xml:base="https://news.example.org/">',
        "<title>Bench: latest</title><id>tag:news.example.org,2024:bench</id>",
        f"<updated>{AS_OF:%Y-%m-%dT%H:%M:%SZ}</updated>",
    ]
    for i in range(items):
        section = rng.choice(SECTIONS)
        out.append(
            f"<entry><title>Story {i}: {paragraph(rng, 8)}</title><id>atom-{i}</id>"
            f'<link rel="alternate" href="stories/{i}"/>'
            f"<published>{when(i):%Y-%m-%dT%H:%M:%SZ}</published><updated>{when(i):%Y-%m-%dT%H:%M:%SZ}</updated>"
            f'<author><name>Writer {i % 11}</name></author><category term="{section.lower()}" label="{section}"/>'
            f'<summary type="html">{html.escape("<p>" + paragraph(rng, 40) + "</p>")}</summary>'
            f'<content type="html">{html.escape(body(rng, i))}</content></entry>'
        )
    out.append("</feed>")
    return "\n".join(out)


def pt_date(moment: dt.datetime) -> str:
    local = moment.astimezone(dt.timezone(dt.timedelta(hours=-3)))
    return (
        f"{PT_DAYS[local.weekday()]}, {local.day:02d} {PT_MONTHS[local.month - 1]} {local.year} {local:%H:%M:%S} -0300"
    )


def make_archive(rng: random.Random, items: int) -> str:
    """A FeedBurner-style archive: one item a day, every seventh a round-up."""
    site = "http://www.observatorio.example.org"
    flare = (
        '<div class="feedflare"><a href="http://feeds.feedburner.com/~ff/Obs?a={n}:x">'
        '<img src="http://feeds.feedburner.com/~ff/Obs?d=yIl2AUoC8zA" border="0"></a></div>'
        '<img src="http://feeds.feedburner.com/~r/Obs/~4/{n}" height="1" width="1" alt="">'
    )
    out = [
        "",
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/" '
        'xmlns:feedburner="http://rssnamespace.org/feedburner/ext/1.0" '
        'xmlns:media="http://search.yahoo.com/mrss/">',
        f"<channel><title>Bench: Observatório</title><link>{site}/</link>",
    ]
    for i in range(items):
        moment = AS_OF - dt.timedelta(days=i, hours=2)
        title = f"Diplomacy Watch: semana {i}" if i % 7 == 0 else f"Notícia {i}: {paragraph(rng, 7)}"
        content = (
            f'<p><img src="{site}/up/autor-{i % 9}-40x40.jpg" width="40" height="40"> Por Autor {i % 9}</p>'
            + "".join(f"<p>{paragraph(rng, 28)}</p>" for _ in range(2))
            + f'<figure><img src="{site}/up/{i}-1200.jpg" width="1200" height="800">'
            f"<figcaption>Foto {i}</figcaption></figure>"
            f'<img src="{site}/px.gif" style="display:none">' + flare.format(n=i)
        )
        out.append(
            f"<item><title>{title}</title>"
            f"<link>http://feeds.feedburner.com/~r/Obs/~3/{i}/</link>"
            f'<guid isPermaLink="false">{site}/?p={i}</guid><pubDate>{pt_date(moment)}</pubDate>'
            f"<category>{rng.choice(SECTIONS)}</category>"
            f'<media:thumbnail url="{site}/up/{i}-150x150.jpg" width="150" height="150"/>'
            f"<description><![CDATA[<p>{paragraph(rng, 20)}</p>{flare.format(n=i)}]]></description>"
            f"<content:encoded><![CDATA[{content}]]></content:encoded>"
            f"<feedburner:origLink>{site}/{moment:%Y/%m}/noticia-{i}/</feedburner:origLink></item>"
        )
    out.append("</channel></rss>")
    return "\n".join(out)


def bench_settings(folder: Path, sources: dict[str, Any]) -> Settings:
    """Settings for a bench run: a publication, and ``sources`` reading files in ``folder``."""
    from newsletter.config import Settings

    return Settings.model_validate(
        {
            "publication": {
                "name": "Bench",
                "website_url": "https://news.example.org",
                "public_url": "https://news.example.org",
                "organisation": "Bench",
                "postal_address": "1 Example Road",
            },
            "sender": {"from_name": "Bench", "from_address": "bench@news.example.org"},
            "issues_dir": str(folder / "issues"),
            "sources": {**sources, "fetch": {"cache_dir": str(folder / "cache")}},
        }
    )


def bench_archive(runs: int, items: int) -> None:
    """gather_issue on the archive feed alone (round-up and teasers from it)."""
    from newsletter.gather import gather_issue

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "archive.rss"
        path.write_text(make_archive(random.Random(12), items), encoding="utf-8")
        settings = bench_settings(
            folder,
            {
                "roundup": {"feed": str(path)},
                "teasers": {"feeds": [str(path)], "count": 8},
                "https_domains": ["observatorio.example.org"],
            },
        )

        def once() -> float:
            start = time.perf_counter()
            issue = gather_issue(settings, AS_OF).issue
            elapsed = time.perf_counter() - start
            assert issue.roundup is not None and len(issue.teasers) == 6  # a week, one a day
            assert issue.roundup.image is not None and "1200" in issue.roundup.image.src
            return elapsed

        cold = once()
        median = statistics.median(once() for _ in range(runs))
        size = path.stat().st_size / 1e6
    verdict = "OK" if median <= ARCHIVE_TARGET_SECONDS else "OVER TARGET"
    print(
        f"archive feed: {items} items ({size:.2f} MB): median {median:.3f} s of {runs} runs "
        f"(first run {cold:.3f} s); target <= {ARCHIVE_TARGET_SECONDS} s: {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--archive-items", type=int, default=730)
    args = parser.parse_args()

    from newsletter.gather import gather_issue
    from newsletter.gather.extract import extract_entries
    from newsletter.gather.fetch import FeedFetcher
    from newsletter.gather.parse import parse_feed
    from newsletter.sanitize import sanitize_html

    rng = random.Random(3)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rss_path, atom_path = folder / "roundup.rss", folder / "latest.atom"
        rss_path.write_text(make_rss(rng, args.items), encoding="utf-8")
        atom_path.write_text(make_atom(rng, args.items), encoding="utf-8")
        settings = bench_settings(
            folder,
            {
                "roundup": {"feed": str(rss_path)},
                "teasers": {"feeds": [str(rss_path), str(atom_path)], "count": 8},
            },
        )
        sizes = f"{rss_path.stat().st_size / 1e6:.1f} MB + {atom_path.stat().st_size / 1e6:.1f} MB"

        def once() -> float:
            start = time.perf_counter()
            issue = gather_issue(settings, AS_OF).issue
            elapsed = time.perf_counter() - start
            assert issue.roundup is not None and len(issue.teasers) == 8
            return elapsed

        cold = once()
        median = statistics.median(once() for _ in range(args.runs))

        def sanitize_everything() -> float:
            assert settings.sources is not None
            with FeedFetcher(settings.sources.fetch, "bench") as fetcher:
                entries = [
                    e for path in (rss_path, atom_path) for e in extract_entries(parse_feed(fetcher.fetch(str(path))))
                ]
            start = time.perf_counter()
            for entry in entries:
                sanitize_html(entry.content_html, entry.base_url)
            return time.perf_counter() - start

        all_bodies = statistics.median(sanitize_everything() for _ in range(3))

    verdict = "OK" if median <= TARGET_SECONDS else "OVER TARGET"
    print(f"feeds: 2 x {args.items} items ({sizes}), as of {AS_OF:%Y-%m-%dT%H:%MZ}")
    print(
        f"gather in-process (parse + extract + sanitize + select): median {median:.3f} s "
        f"of {args.runs} runs (first run {cold:.3f} s); target <= {TARGET_SECONDS} s: {verdict}"
    )
    print(f"for comparison, sanitizing all {2 * args.items} bodies: {all_bodies:.3f} s")
    if args.archive_items:
        bench_archive(args.runs, args.archive_items)


if __name__ == "__main__":
    main()
