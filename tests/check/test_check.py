"""The render check in Debian's Chromium on the shipped example issue and on an issue
gathered from the fixture feeds (the issue's acceptance), and on emails broken on
purpose: overflow, unreadable dark mode, a missing doctype."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import lxml.html
import pytest

from newsletter import rendercheck
from newsletter.browser import Browser
from newsletter.config import Settings
from newsletter.rendercheck import CheckOutput
from tests.check.conftest import needs_chromium

pytestmark = [pytest.mark.browser, needs_chromium]

ISSUES = ("example", "gathered")


@pytest.fixture(scope="module")
def checked(checked_project: tuple[Settings, dict[str, Path]]) -> dict[str, CheckOutput]:
    settings, issues = checked_project
    return {name: rendercheck.check_issue(path, settings, settings.output.dir / name) for name, path in issues.items()}


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("name", ISSUES)
def test_four_renders_with_screenshots(checked: dict[str, CheckOutput], checked_project, name: str) -> None:
    report = checked[name].report
    assert report.skipped is None
    assert {(r.width, r.scheme) for r in report.renders} == {
        (375, "light"),
        (375, "dark"),
        (600, "light"),
        (600, "dark"),
    }
    out = checked_project[0].output.dir / name
    for r in report.renders:
        width, height = _png_size(out / r.screenshot)
        assert width == r.width and height > 2000  # the whole email, not the first screen
    assert rendercheck.recorded(out, rendercheck.sample_html(checked[name].build, checked_project[0])) == report


@pytest.mark.parametrize("name", ISSUES)
def test_no_serious_axe_violation_no_overflow_readable_in_both_schemes(
    checked: dict[str, CheckOutput], name: str
) -> None:
    report = checked[name].report
    for r in report.renders:
        assert [v for v in r.axe if v.impact in ("serious", "critical")] == [], r.name
        assert r.low_contrast == [], r.name
        assert r.small_targets == [], r.name
        assert r.smallest_font_px >= 12, r.name
        assert not r.quirks_mode
    assert [r.overflow_px for r in report.renders if r.width == 375] == [0, 0]
    assert report.errors == [], report.errors
    assert report.warnings == [], report.warnings


@pytest.mark.parametrize("name", ISSUES)
def test_image_width_attributes_are_the_rendered_widths(checked: dict[str, CheckOutput], name: str) -> None:
    wide = [r for r in checked[name].report.renders if r.width == 600]
    images = [img for r in wide for img in r.images]
    assert images, "the issue has images"
    for img in images:
        assert img["attribute"] == str(img["rendered"]), img
    assert {img["rendered"] for img in images} == {544}


@pytest.mark.parametrize("name", ISSUES)
def test_doctype_and_headings(checked: dict[str, CheckOutput], checked_project, name: str) -> None:
    from newsletter import issuefile

    issue = issuefile.load(checked_project[1][name])
    email = checked[name].build.built.email
    assert email.html.lower().startswith("<!doctype html>")
    doc = lxml.html.document_fromstring(email.html)
    assert issue.roundup is not None
    assert [h.text_content().strip() for h in doc.iter("h1")] == [issue.roundup.title]
    h2 = [h.text_content().strip() for h in doc.cssselect("h2.teaser-title, h2.appeal-heading")]
    assert h2 == [t.title for t in issue.teasers] + ([issue.appeal.heading] if issue.appeal else [])


@pytest.mark.parametrize("name", ISSUES)
def test_no_client_lacks_support_for_content(checked: dict[str, CheckOutput], name: str) -> None:
    notes = checked[name].report.compat
    assert notes, "the report names what the clients lack"
    assert [n for n in notes if n.carries_content and n.support == "unsupported"] == []
    radius = [n for n in notes if n.feature == "css-border-radius" and n.client == "Outlook (Windows)"]
    assert radius and radius[0].support == "unsupported" and "square" in radius[0].fallback
    clients = {n.client for n in notes}
    assert {"Outlook (Windows)", "Gmail (web)", "Yahoo Mail"} <= clients


def test_overflow_and_unreadable_dark_mode_are_errors(tmp_path: Path, settings: Settings) -> None:
    broken = (
        '<!doctype html><html lang="en"><head><title>t</title><style>'
        "@media (prefers-color-scheme: dark) { .t { color: #fdfdfd !important; } }</style></head>"
        '<body style="margin:0;background:#ffffff"><h1 class="t" style="color:#111111">Headline</h1>'
        '<div style="width:700px">A table that does not fit a phone.</div></body></html>'
    )
    report = rendercheck.run_check(broken, tmp_path, settings.render_check.chromium)
    errors = "\n".join(report.errors)
    assert "375 px, light): " in errors and "px of horizontal overflow" in errors
    assert re.search(r"\((375|600) px, dark\): contrast 1\.0\d?:1 \(AA needs 3:1\) for 'Headline'", errors), errors
    assert "axe serious color-contrast" in errors


def test_quirks_mode_is_an_error(tmp_path: Path, settings: Settings) -> None:
    report = rendercheck.run_check(
        '<html lang="en"><head><title>t</title></head><body><p>Hi</p></body></html>',
        tmp_path,
        settings.render_check.chromium,
    )
    assert any("no <!doctype html>" in e for e in report.errors)


def test_rules_shared_out_between_the_schemes_are_all_run(tmp_path: Path, settings: Settings) -> None:
    # image-alt and html-has-lang depend on neither layout nor colour: each runs in one
    # scheme's first render only, and each is found
    broken = (
        "<!doctype html><html><head><title>t</title></head><body>"
        '<p>Text</p><img src="https://img.example.org/a.jpg" width="100" height="60"></body></html>'
    )
    report = rendercheck.run_check(broken, tmp_path, settings.render_check.chromium)
    found = {v.rule: r.name for r in report.renders for v in r.axe}
    assert {"image-alt", "html-has-lang"} <= set(found), found
    # ...once each, in a first (600 px) render, whichever scheme it was dealt to
    assert all(found[rule].startswith("600 px") for rule in ("image-alt", "html-has-lang"))
    assert sum(1 for e in report.errors if "image-alt" in e) == 1


def test_a_browser_that_cannot_start_is_one_error_and_leaves_nothing_running(tmp_path: Path) -> None:
    import threading

    from newsletter.errors import BuildError

    not_a_browser = tmp_path / "chromium"
    not_a_browser.write_text("#!/bin/sh\nexit 3\n")
    not_a_browser.chmod(0o755)
    with pytest.raises(BuildError, match=r"^render check: Chromium failed: ") as caught:
        rendercheck.run_check("<!doctype html><p>Hi</p>", tmp_path, not_a_browser)
    assert "\n" not in str(caught.value)
    assert not [t for t in threading.enumerate() if t.name == "render-check"]
    assert not (tmp_path / rendercheck.REPORT_NAME).exists()


def test_chromium_starts_early_only_when_the_recorded_report_is_older_than_the_inputs(
    checked_project: tuple[Settings, dict[str, Path]], checked: dict[str, CheckOutput]
) -> None:
    import os

    settings, issues = checked_project
    out = settings.output.dir / "example"
    assert rendercheck._probably_recorded(out, issues["example"], settings)
    with Browser(None) as browser:
        again = rendercheck.check_issue(issues["example"], settings, out, browser=browser)
        assert not browser._chromium.done() or browser._chromium.result() is None  # not launched
    assert again.report == checked["example"].report  # reused, not rendered again
    later = (out / rendercheck.REPORT_NAME).stat().st_mtime + 5
    os.utime(issues["example"], (later, later))
    assert not rendercheck._probably_recorded(out, issues["example"], settings)


def test_images_are_inline_placeholders_that_keep_their_source() -> None:
    from newsletter.browser import _offline_images

    html = '<p><img alt="" data-src="lazy.jpg" src="https://img.example.org/a.jpg" width="544"></p>'
    offline = _offline_images(html)
    assert 'src="data:image/svg+xml,' in offline and 'data-check-src="https://img.example.org/a.jpg"' in offline
    assert (
        'data-src="lazy.jpg"' in offline and "https://img.example.org/a.jpg" not in offline.split("data-check-src")[0]
    )
