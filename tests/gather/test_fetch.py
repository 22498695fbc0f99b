"""Fetching feeds over real HTTP on 127.0.0.1 and from files: redirects, conditional GET
with a cache between runs, HTTP errors, timeouts, size caps, gzip, file: URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.config import Fetching
from newsletter.errors import FeedError
from newsletter.gather.fetch import FeedFetcher, user_agent

from .conftest import FeedServer

FEED = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'


def fetcher(tmp_path: Path, **options: object) -> FeedFetcher:
    fetching = Fetching(cache_dir=tmp_path / "cache", **options)  # type: ignore[arg-type]
    return FeedFetcher(fetching, user_agent("https://letters.example.org"))


def test_fetches_over_http_with_a_user_agent_naming_the_tool(feed_server: FeedServer, tmp_path: Path) -> None:
    url = feed_server.add("/feed.rss", FEED)
    with fetcher(tmp_path) as f:
        got = f.fetch(url)
    assert got.body == FEED
    assert got.content_type == "application/rss+xml; charset=utf-8"
    agent = feed_server.seen[0].headers["user-agent"]
    assert agent.startswith("newsletter/") and agent.endswith("(+https://letters.example.org)")
    assert "gzip" in feed_server.seen[0].headers["accept-encoding"]


def test_configured_user_agent_wins() -> None:
    assert user_agent("https://x.example", "Custom/1.0") == "Custom/1.0"


def test_follows_redirects_and_reports_the_final_url(feed_server: FeedServer, tmp_path: Path) -> None:
    target = feed_server.add("/new/feed.rss", FEED)
    old = feed_server.redirect("/old/feed.rss", target, status=301)
    with fetcher(tmp_path) as f:
        got = f.fetch(old)
    assert got.body == FEED and got.url == target


def test_a_redirect_loop_is_an_error_naming_the_source(feed_server: FeedServer, tmp_path: Path) -> None:
    a = feed_server.redirect("/a", feed_server.url("/b"))
    feed_server.redirect("/b", a)
    with fetcher(tmp_path) as f, pytest.raises(FeedError, match=r"^http://127\.0\.0\.1:\d+/a: more than 5 redirects$"):
        f.fetch(a)


@pytest.mark.parametrize("status", [404, 500, 503])
def test_http_errors_name_the_source_and_status(feed_server: FeedServer, tmp_path: Path, status: int) -> None:
    url = feed_server.add("/broken.rss", b"oops", status=status, content_type="text/plain")
    with fetcher(tmp_path) as f, pytest.raises(FeedError) as err:
        f.fetch(url)
    assert str(err.value).startswith(f"{url}: HTTP {status}")
    assert "\n" not in str(err.value)


def test_etag_is_sent_back_and_a_304_reuses_the_cached_body(feed_server: FeedServer, tmp_path: Path) -> None:
    url = feed_server.add("/feed.rss", FEED, etag='"v1"')
    with fetcher(tmp_path) as f:
        first = f.fetch(url)
    with fetcher(tmp_path) as f:  # a later run: a new client, the same cache folder
        second = f.fetch(url)
    assert "if-none-match" not in feed_server.seen[0].headers
    assert feed_server.seen[1].headers["if-none-match"] == '"v1"'
    assert not first.from_cache and second.from_cache
    assert second.body == FEED
    assert second.content_type == "application/rss+xml; charset=utf-8"


def test_last_modified_is_sent_back_as_if_modified_since(feed_server: FeedServer, tmp_path: Path) -> None:
    stamp = "Fri, 25 Oct 2024 20:45:00 GMT"
    url = feed_server.add("/feed.rss", FEED, last_modified=stamp)
    with fetcher(tmp_path) as f:
        f.fetch(url)
        again = f.fetch(url)
    assert feed_server.seen[1].headers["if-modified-since"] == stamp
    assert again.from_cache and again.body == FEED


def test_a_304_without_a_cached_body_fetches_again(feed_server: FeedServer, tmp_path: Path) -> None:
    url = feed_server.add("/feed.rss", FEED, etag='"v1"')
    with fetcher(tmp_path) as f:
        f.fetch(url)
    for body in (tmp_path / "cache").glob("*.body"):
        body.unlink()
    with fetcher(tmp_path) as f:
        got = f.fetch(url)
    assert got.body == FEED and not got.from_cache


def test_a_changed_feed_replaces_the_cache(feed_server: FeedServer, tmp_path: Path) -> None:
    url = feed_server.add("/feed.rss", FEED, etag='"v1"')
    with fetcher(tmp_path) as f:
        f.fetch(url)
    newer = FEED.replace(b"<title>t</title>", b"<title>t2</title>")
    feed_server.add("/feed.rss", newer, etag='"v2"')
    with fetcher(tmp_path) as f:
        assert f.fetch(url).body == newer
        assert f.fetch(url).from_cache
    assert feed_server.seen[-1].headers["if-none-match"] == '"v2"'


def test_a_slow_server_hits_the_timeout(feed_server: FeedServer, tmp_path: Path) -> None:
    url = feed_server.add("/slow.rss", FEED, delay=30)
    with (
        fetcher(tmp_path, timeout_seconds=0.2) as f,
        pytest.raises(FeedError, match=r"slow\.rss: timed out after 0\.2 s"),
    ):
        f.fetch(url)


def test_a_server_dripping_bytes_hits_the_overall_deadline(feed_server: FeedServer, tmp_path: Path) -> None:
    # Each chunk arrives well within the read timeout; the whole never arrives in time.
    url = feed_server.add("/drip.rss", FEED * 200, drip=0.05)
    with fetcher(tmp_path, timeout_seconds=0.3) as f, pytest.raises(FeedError, match="timed out"):
        f.fetch(url)


def test_nothing_listening_is_a_connection_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago and is closed now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/feed.rss"
    with fetcher(tmp_path) as f, pytest.raises(FeedError, match=rf"^{url}: cannot connect"):
        f.fetch(url)


def test_a_declared_length_over_the_cap_is_refused_before_reading(feed_server: FeedServer, tmp_path: Path) -> None:
    url = feed_server.add("/huge.rss", b"x" * 50_000)
    with fetcher(tmp_path, max_bytes=10_000) as f, pytest.raises(FeedError, match=r"larger than the 10,000-byte limit"):
        f.fetch(url)


def test_an_undeclared_length_over_the_cap_is_cut_off_while_streaming(feed_server: FeedServer, tmp_path: Path) -> None:
    url = feed_server.add("/huge.rss", b"x" * 500_000, send_length=False)
    with fetcher(tmp_path, max_bytes=10_000) as f, pytest.raises(FeedError, match=r"huge\.rss: larger than"):
        f.fetch(url)


def test_gzip_is_decoded_and_the_cap_applies_to_the_decoded_size(feed_server: FeedServer, tmp_path: Path) -> None:
    small = feed_server.add("/small.rss", FEED, gzip=True)
    bomb = feed_server.add("/bomb.rss", b" " * 2_000_000, gzip=True)  # ~2 KB on the wire
    with fetcher(tmp_path, max_bytes=100_000) as f:
        assert f.fetch(small).body == FEED
        with pytest.raises(FeedError, match="larger than"):
            f.fetch(bomb)


def test_local_paths_and_file_urls(tmp_path: Path) -> None:
    path = tmp_path / "my feed.rss"
    path.write_bytes(FEED)
    with fetcher(tmp_path) as f:
        assert f.fetch(str(path)).body == FEED
        assert f.fetch(path.as_uri()).body == FEED


def test_local_file_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.rss"
    big = tmp_path / "big.rss"
    big.write_bytes(b"x" * 2000)
    with fetcher(tmp_path, max_bytes=1000) as f:
        with pytest.raises(FeedError, match=rf"^{missing}: file not found$"):
            f.fetch(str(missing))
        with pytest.raises(FeedError, match="big.rss: larger than the 1,000-byte limit"):
            f.fetch(str(big))
        with pytest.raises(FeedError, match="no host"):
            f.fetch("file://elsewhere.example/feed.rss")


def test_unsupported_schemes_are_refused(tmp_path: Path) -> None:
    with fetcher(tmp_path) as f, pytest.raises(FeedError, match="unsupported URL scheme 'ftp'"):
        f.fetch("ftp://news.example.org/feed.rss")


@pytest.mark.parametrize("wbits", [15, -15], ids=["zlib-wrapped", "raw"])
def test_deflate_is_decoded_whichever_way_the_server_wraps_it(
    feed_server: FeedServer, tmp_path: Path, wbits: int
) -> None:
    import zlib

    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    body = packer.compress(FEED * 50) + packer.flush()
    url = feed_server.add("/deflated.rss", body, headers={"Content-Encoding": "deflate"})
    with fetcher(tmp_path) as f:
        assert f.fetch(url).body == FEED * 50
    assert feed_server.seen[0].headers["accept-encoding"] == "gzip, deflate"  # nothing we cannot cap


def test_a_gzip_bomb_is_cut_inside_the_decoder(feed_server: FeedServer, tmp_path: Path) -> None:
    import gzip

    bomb = gzip.compress(b" " * 20_000_000, 9)  # about 20 KB on the wire
    url = feed_server.add("/bomb.rss", bomb, headers={"Content-Encoding": "gzip"})
    with (
        fetcher(tmp_path, max_bytes=1_000_000) as f,
        pytest.raises(FeedError, match=r"bomb\.rss: larger than the 1,000,000-byte limit"),
    ):
        f.fetch(url)


@pytest.mark.parametrize("encoding", ["gzip, gzip", "br", "gzip, identity, deflate"])
def test_stacked_or_unknown_encodings_are_refused(feed_server: FeedServer, tmp_path: Path, encoding: str) -> None:
    url = feed_server.add("/odd.rss", b"\x1f\x8b whatever", headers={"Content-Encoding": encoding})
    with fetcher(tmp_path) as f, pytest.raises(FeedError) as err:
        f.fetch(url)
    assert str(err.value) == (
        f"{url}: refused: Content-Encoding {encoding!r} (only one layer of gzip or deflate is decoded)"
    )


def test_identity_alongside_gzip_is_one_layer(feed_server: FeedServer, tmp_path: Path) -> None:
    import gzip

    url = feed_server.add("/id.rss", gzip.compress(FEED), headers={"Content-Encoding": "identity, gzip"})
    with fetcher(tmp_path) as f:
        assert f.fetch(url).body == FEED
