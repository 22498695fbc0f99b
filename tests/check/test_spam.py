"""SpamAssassin (Debian's package, rules as shipped in /usr/share/spamassassin, no
sa-update) scores the built .eml offline (-L): at most 1.0 for the example issue and for
an issue gathered from the fixture feeds. The rules hit are printed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from newsletter import render
from newsletter.config import Settings

LIMIT = 1.0
SPAMASSASSIN = shutil.which("spamassassin")

pytestmark = pytest.mark.skipif(
    SPAMASSASSIN is None and not os.environ.get("CI"),
    reason="Debian's spamassassin is not installed (it is required when CI is set)",
)


def score(eml: bytes, home: Path) -> tuple[float, list[str]]:
    """SpamAssassin's score of a message, offline, and the rules it hit."""
    assert SPAMASSASSIN is not None
    done = subprocess.run(
        [SPAMASSASSIN, "-L", "-t", "-x"],
        input=eml,
        capture_output=True,
        timeout=120,
        env={**os.environ, "HOME": str(home)},
    )
    report = done.stdout.decode("utf-8", "replace")
    found = re.search(r"Content analysis details:\s+\((-?[\d.]+) points", report)
    assert found, done.stderr.decode("utf-8", "replace")[-500:]
    rules = re.findall(r"^\s*(-?[\d.]+) ([A-Z0-9_]+) ", report[found.end() :], re.MULTILINE)
    return float(found.group(1)), [f"{name} {points}" for points, name in rules]


@pytest.mark.parametrize("name", ["example", "gathered"])
def test_spam_score_is_low(checked_project: tuple[Settings, dict[str, Path]], name: str, tmp_path: Path) -> None:
    settings, issues = checked_project
    settings = settings.model_copy(
        update={"render_check": settings.render_check.model_copy(update={"on_build": "off"})}
    )
    out = render.build_to_dir(issues[name], settings, tmp_path / "build")
    eml = next(path for path, _size in out.files if path.name == "email.eml").read_bytes()
    points, rules = score(eml, tmp_path)
    print(f"{name}: SpamAssassin {points} points: {', '.join(rules)}")
    assert points <= LIMIT, rules
    assert not [r for r in rules if r.startswith(("HTML_FONT_LOW_CONTRAST", "HTML_IMAGE_ONLY", "MIME_HTML_ONLY"))]


def test_the_scorer_can_fail(tmp_path: Path) -> None:
    """A message made to look like spam scores over the limit: the test above can fail."""
    spam = (
        b"From: winner@example.com\r\nTo: you@example.net\r\nSubject: FREE MONEY!!! Claim your PRIZE now\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><body><font color='#ffffff'>hidden words</font><p>100% FREE! Act now! Click here to claim "
        b"your $1,000,000 prize. Guaranteed! No risk! Viagra cheap!</p></body></html>\r\n"
    )
    points, rules = score(spam, tmp_path)
    assert points > LIMIT, rules
