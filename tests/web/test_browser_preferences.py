# ruff: noqa: F811 - the fixtures imported from test_browser are parameters here
"""The preferences page end to end in Debian's Chromium (Playwright) against `newsletter
serve`: a reader follows the footer link of an issue sent to the outbox, pauses
delivery, downloads their data and erases themselves. Screenshots go to
$NEWSLETTER_TEST_ARTIFACTS (see test_browser.py, whose fixtures these are)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lxml.html
import pytest

from newsletter.store import preferences, subscribers
from newsletter.store.db import create_store_engine

from .test_browser import CHROMIUM, SLUG, Server, read_eml, shot

pytestmark = pytest.mark.browser
if not CHROMIUM.exists():  # test_browser skips the module the same way (and fails under CI)
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

from playwright.sync_api import Page, expect  # noqa: E402

from .test_browser import artifacts, browser, page, server  # noqa: E402, F401 - its fixtures


def footer_link(server: Server, address: str) -> str:
    [eml] = list((server.project / "outbox" / SLUG).glob(f"*{address}.eml"))
    html = read_eml(eml).get_body(("html",)).get_content()  # type: ignore[union-attr]
    doc = lxml.html.document_fromstring(html)
    [href] = [a.get("href") for a in doc.iter("a") if a.text_content().strip() == "Preferences"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/preferences/[A-Za-z0-9_-]+", href or "")
    return str(href)


def test_a_reader_pauses_downloads_their_data_and_erases_themselves(
    server: Server, page: Page, artifacts: Path, tmp_path: Path
) -> None:
    server.cli("approve", str(server.issue_path))
    server.cli("send", str(server.issue_path))
    link = footer_link(server, "reader@example.net")
    page.goto(link)
    expect(page.get_by_role("heading", name="Your preferences")).to_be_visible()
    expect(page.get_by_text("r***@example.net")).to_be_visible()
    shot(page, "preferences.png", artifacts)

    page.get_by_label("Pause delivery for").select_option("3")
    page.get_by_role("button", name="Pause delivery").click()
    expect(page.locator("#result")).to_contain_text("Delivery is paused until")
    expect(page.get_by_role("button", name="Resume delivery now")).to_be_visible()
    shot(page, "preferences-paused.png", artifacts)
    engine = create_store_engine(f"sqlite:///{server.project / 'newsletter.db'}")
    try:
        reader = subscribers.get(engine, "reader@example.net")
        assert reader is not None and preferences.paused_until(engine, reader.id) is not None

        with page.expect_download() as download:
            page.get_by_role("button", name="Download my data (JSON)").click()
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        data = json.loads(saved.read_text(encoding="utf-8"))
        assert data["subscriber"]["email"] == "reader@example.net" and data["subscriber"]["paused_until"]
        assert [d["issue"] for d in data["deliveries"]] == [SLUG]
        assert reader.token not in saved.read_text(encoding="utf-8")

        page.get_by_role("button", name="Erase me").click()  # the box is required: nothing happens
        expect(page.get_by_role("heading", name="Your preferences")).to_be_visible()
        assert subscribers.get(engine, "reader@example.net") is not None
        page.get_by_label(re.compile("I want my address and everything about me erased")).check()
        page.get_by_role("button", name="Erase me").click()
        expect(page.locator("#result")).to_have_text("You are erased")
        shot(page, "preferences-erased.png", artifacts)
        assert subscribers.get(engine, "reader@example.net") is None
        assert subscribers.is_suppressed(engine, "reader@example.net")
    finally:
        engine.dispose()
    page.goto(link)
    expect(page.get_by_role("heading")).to_have_text("Not found")
