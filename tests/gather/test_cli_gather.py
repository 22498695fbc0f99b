"""``newsletter gather``: exit codes, one-line errors naming the source, nothing written on
failure, the --force rules, and gather -> build end to end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from newsletter import issuefile
from newsletter.cli import main

from .conftest import FeedServer
from .feedmaker import rss, rss_item

AS_OF = "2024-10-25T21:00:00Z"


@pytest.fixture
def config(project: Path) -> Path:
    """The repository's config, with the hand-written example issue out of the way."""
    (project / "issues" / "2024-10-25.yaml").unlink(missing_ok=True)
    return project / "config.yaml"


def run(config: Path, *args: str) -> int:
    return main(["--config", str(config), "gather", *args])


def test_gather_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gather", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Gather this week's round-up" in out and "--as-of" in out and "--force" in out


def test_gather_writes_the_draft_and_says_where(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as-of", AS_OF) == 0
    path = config.parent / "issues" / "2024-10-25.yaml"
    assert capsys.readouterr().out.strip() == f"wrote {path} (round-up, 5 teasers)"
    assert issuefile.load(path).roundup is not None


def test_out_option(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "draft.yaml"
    assert run(config, "--as-of", AS_OF, "--out", str(out)) == 0
    assert out.is_file() and not (config.parent / "issues" / "2024-10-25.yaml").exists()


def test_a_bad_as_of_is_a_usage_error(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as-of", "next week") == 2
    assert capsys.readouterr().err.strip() == (
        "error: --as-of: not an ISO 8601 date or time: 'next week' (see 'newsletter gather --help')"
    )


def test_the_hand_written_example_is_not_overwritten_without_force(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = project / "issues" / "2024-10-25.yaml"
    before = path.read_bytes()
    assert main(["--config", str(project / "config.yaml"), "gather", "--as-of", AS_OF]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {path}: not written by gather (it has no gathered: record); not replaced (use --force to overwrite it)"
    )
    assert path.read_bytes() == before
    assert main(["--config", str(project / "config.yaml"), "gather", "--as-of", AS_OF, "--force"]) == 0
    assert issuefile.load(path).gathered is not None


@pytest.mark.parametrize("status", ["approved", "sent"])
def test_approved_and_sent_issues_need_force(config: Path, status: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "--as-of", AS_OF) == 0
    path = config.parent / "issues" / "2024-10-25.yaml"
    issuefile.save(issuefile.load(path).model_copy(update={"status": status}), path)
    assert run(config, "--as-of", AS_OF) == 2
    assert f"the issue is {status}; not replaced" in capsys.readouterr().err
    assert issuefile.load(path).status == status
    assert run(config, "--as-of", AS_OF, "--force") == 0
    assert issuefile.load(path).status == "draft"


def test_a_missing_feed_file_is_one_line_naming_it(
    config: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config({"sources": {"roundup": {"feed": "samples/feeds/missing.rss"}}})
    assert run(cfg, "--as-of", AS_OF) == 1
    err = capsys.readouterr().err
    assert err == f"error: {config.parent / 'samples/feeds/missing.rss'}: file not found\n"
    assert list((config.parent / "issues").glob("*.yaml")) == []


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        ({"status": 500, "body": b"boom", "content_type": "text/plain"}, "HTTP 500 Internal Server Error"),
        ({"body": "<rss><channel><item><title>x</item></channel></rss>"}, "malformed XML"),
        ({"body": rss()}, "the feed has no items"),
        (
            {"body": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><rss/>'},
            "refused: the feed declares XML entities",
        ),
        ({"body": b"<rss>" + b"x" * 20_000 + b"</rss>"}, "larger than the 10,000-byte limit"),
        ({"body": b"", "delay": 30}, "timed out after 0.3 s"),
    ],
)
def test_a_bad_roundup_feed_fails_with_one_line_and_writes_nothing(
    config: Path,
    write_config: Callable[..., Path],
    feed_server: FeedServer,
    capsys: pytest.CaptureFixture[str],
    route: dict[str, object],
    reason: str,
) -> None:
    url = feed_server.add("/feeds/roundup.rss", **route)  # type: ignore[arg-type]
    cfg = write_config({"sources": {"roundup": {"feed": url}, "fetch": {"max_bytes": 10_000, "timeout_seconds": 0.3}}})
    assert run(cfg, "--as-of", AS_OF) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {url}: {reason}") and err.count("\n") == 1
    assert list((config.parent / "issues").glob("*.yaml")) == []


def test_no_roundup_exits_3_and_writes_nothing(
    config: Path, write_config: Callable[..., Path], feed_server: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = feed_server.add("/feeds/roundup.rss", rss(rss_item("Podcast: ceasefire", "https://news.example.org/p")))
    cfg = write_config({"sources": {"roundup": {"feed": url}}})
    assert run(cfg, "--as-of", AS_OF) == 3
    assert "no item matches title_prefix 'Diplomacy Watch:'; skipping this week" in capsys.readouterr().err
    assert list((config.parent / "issues").glob("*.yaml")) == []


def test_a_failing_teaser_feed_is_a_warning(
    config: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config({"sources": {"teasers": {"feeds": ["samples/feeds/latest.atom", "samples/feeds/gone.atom"]}}})
    assert run(cfg, "--as-of", AS_OF) == 0
    captured = capsys.readouterr()
    assert (
        "warning: " in captured.err and "gone.atom: file not found; gathered without this teaser feed" in captured.err
    )
    assert "(round-up, 5 teasers)" in captured.out


def test_gather_then_build(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("newsletter.render")
    assert run(config, "--as-of", AS_OF) == 0
    path = config.parent / "issues" / "2024-10-25.yaml"
    out = tmp_path / "build"
    assert main(["--config", str(config), "build", str(path), "--out", str(out)]) == 0
    html = (out / "email.html").read_text(encoding="utf-8")
    text = (out / "email.txt").read_text(encoding="utf-8")
    assert "Kyiv and its partners strain as the front heats up" in html
    assert "Other Ukraine news this week" in html
    assert "Ukraine&#39;s own pragmatism" in html or "Ukraine's own pragmatism" in html
    assert "Контрибутор" in html or "non-alignment" in html
    for trap in ("<script", "trackReader", "pixel.tracker", "javascript:", "evil.example.net"):
        assert trap not in html
    assert "The new security strategy runs on rare earths" in text
    assert (out / "email.eml").is_file()
