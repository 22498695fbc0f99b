"""The email-client compatibility report from the vendored caniemail snapshot (no
browser): which features an email uses, what each client lacks, which gaps fail the
check, and the refresh script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from newsletter import compat
from tests.conftest import ROOT

SNIPPET = (
    '<!doctype html><html lang="en"><head><style>@media (prefers-color-scheme: dark) '
    "{ .card > table { background: #000 !important; } }</style></head><body>"
    '<h2 style="border-radius:3px;margin:0">T</h2><ul><li>a</li></ul>'
    '<svg width="10" height="10"></svg><table role="presentation"><tr><td>x</td></tr></table></body></html>'
)


def test_used_features_are_named_by_caniemail_slugs() -> None:
    used = compat.used_features(SNIPPET)
    assert {
        "html-doctype",
        "html-h1-h6",
        "html-lists",
        "html-svg",
        "html-table",
        "html-role",
        "html-lang",
        "css-border-radius",
        "css-margin",
        "css-at-media",
        "css-at-media-prefers-color-scheme",
        "css-important",
        "css-selector-class",
        "css-selector-child",
        "css-background",
    } <= used
    assert "css-display-flex" not in used and "html-video" not in used


def test_unsupported_content_fails_and_unknown_fallbacks_warn() -> None:
    notes = compat.report(SNIPPET)
    svg = [n for n in notes if n.feature == "html-svg" and n.client == "Gmail (web)"]
    assert svg and svg[0].support == "unsupported" and not svg[0].carries_content and svg[0].fallback == ""
    radius = next(n for n in notes if n.feature == "css-border-radius" and n.client == "Outlook (Windows)")
    assert radius.support == "unsupported" and radius.fallback.startswith("square corners")
    assert "RoundRect" in radius.note  # caniemail's own note, links flattened to their text
    checks = compat.checks(notes)
    assert any(
        c.level == "warning"
        and c.message.startswith(
            "Gmail (web): Embedded <svg> image (html-svg) is not supported; check how the email degrades there"
        )
        for c in checks
    )
    assert not [c for c in checks if c.level == "error"]
    content = [compat.ClientNote("html-img", "<img> element", "Outlook (Windows)", "unsupported", "", "", True)]
    assert [c.level for c in compat.checks(content)] == ["error"]


def test_the_snapshot_is_dated_and_licensed() -> None:
    assert compat.snapshot_date() >= "2026-01-01"
    licence = (compat.DATA.parent / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License")


def test_the_refresh_script_checks_then_writes(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "refresh_caniemail.py"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"title": "no slug"}]}), encoding="utf-8")
    into = tmp_path / "snapshot"
    done = subprocess.run([sys.executable, str(script), "--into", str(into), str(bad)], capture_output=True, text=True)
    assert done.returncode == 1 and "a feature without slug or stats" in done.stderr and not into.exists()
    done = subprocess.run(
        [sys.executable, str(script), "--into", str(into), str(compat.DATA)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (into / "data.json").read_bytes() == compat.DATA.read_bytes()
    assert "newest test in the data: 2026-04-16" in (into / "SNAPSHOT").read_text(encoding="utf-8")
