"""The welcome mail through the render check the issue gets before a send: Chromium at
375 and 600 px, light and dark, axe-core, overflow and contrast: no errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from newsletter import issuefile, render, rendercheck, welcome
from newsletter.config import Settings
from tests.check.conftest import needs_chromium
from tests.conftest import EXAMPLE_ISSUE

pytestmark = [pytest.mark.browser, needs_chromium]


def test_the_welcome_mail_passes_the_render_check(tmp_path: Path, settings: Settings) -> None:
    built = welcome.build_welcome(settings, issuefile.load(EXAMPLE_ISSUE), dt.date(2024, 10, 28))
    html, _text = render.personalize_parts(built.email, render.sample_recipient(settings))
    report = rendercheck.run_check(html, tmp_path, settings.render_check.chromium)
    assert report.skipped is None and len(report.renders) == 4
    assert report.errors == [], report.errors
