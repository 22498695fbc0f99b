"""`newsletter demo`, the README's first command: the whole weekly job on the bundled
sample week, which is what a newcomer judges the product by (issue 13, item 10)."""

from __future__ import annotations

import email
import email.policy
import subprocess
import sys
from pathlib import Path

import lxml.html

from newsletter import issuefile

from .conftest import FIXTURES, ROOT


def _demo(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(ROOT / "config.yaml"), "demo", "--dir", "demo"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )


def test_the_demo_sends_the_sample_week(tmp_path: Path) -> None:
    done = _demo(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "added 5 demo subscribers" in done.stdout and "2024-10-25: sent" in done.stdout

    issue = issuefile.load(tmp_path / "demo/issues/2024-10-25.yaml")
    assert issue.roundup is not None and issue.roundup.title.startswith("Diplomacy Watch: ")
    assert issue.roundup.image is not None and issue.roundup.image.credit
    assert "<h2>Other news this week</h2>" in issue.roundup.body_html
    assert "briefing on Oct." in issue.roundup.body_html
    assert 4 <= len(issue.teasers) <= 6
    assert all(t.image is not None and t.image.credit and t.image.alt for t in issue.teasers)
    assert len({t.section for t in issue.teasers}) >= 4  # the week's other desks

    sent = sorted((tmp_path / "demo/outbox/2024-10-25").glob("*.eml"))
    assert len(sent) == 5
    message = email.message_from_bytes(sent[0].read_bytes(), policy=email.policy.default)
    assert message["Subject"].startswith("Diplomacy Watch: ")
    html_part = message.get_body(("html",))
    assert html_part is not None
    shown = " ".join(lxml.html.document_fromstring(html_part.get_content()).text_content().split())
    for teaser in issue.teasers:
        assert teaser.title in shown
        assert teaser.image is not None and teaser.image.credit in shown
    assert "Other news this week" in shown

    again = _demo(tmp_path)  # the issue was sent: a second run sends nothing
    assert again.returncode == 0 and "added" not in again.stdout
    assert len(list((tmp_path / "demo/outbox/2024-10-25").glob("*.eml"))) == 5


def test_the_samples_are_not_the_test_fixtures() -> None:
    """The fixtures carry traps (scripts, pixels, an item already sent) and say so in
    their text; none of that belongs in what a newcomer reads."""
    for name in ("roundup.rss", "latest.atom"):
        sample = (ROOT / "samples/feeds" / name).read_text(encoding="utf-8")
        fixture = (FIXTURES / "feeds" / name).read_text(encoding="utf-8")
        assert sample != fixture
        for trap in ("<script", "tracker", "must not", "must keep", "last week's issue"):
            assert trap not in sample, (name, trap)
