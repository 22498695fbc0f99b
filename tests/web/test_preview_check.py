"""The render check on the editors' preview: none recorded yet, "Run render check" runs
it, then the report, the client table and the four screenshots side by side; a check
of another version of the issue is not shown as this one's."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from newsletter import issuefile
from newsletter.config import Settings
from newsletter.senders.memory import MemorySender
from newsletter.web.app import create_app
from tests.check.conftest import needs_chromium

from .conftest import BASE_URL, EDITOR_TOKEN, SECRET, Clock, csrf_token

SLUG = "2024-10-25"
PAGE = f"/preview/{SLUG}"
pytestmark = pytest.mark.usefixtures("preview_token")  # set before the app is built


@pytest.fixture
def client(editor_client: TestClient) -> TestClient:
    return editor_client


@pytest.mark.browser
@needs_chromium
def test_run_the_check_and_see_the_screenshots(client: TestClient, web_settings: Settings) -> None:
    page = client.get(PAGE).text
    assert 'id="render-check-none"' in page and 'id="run-check"' in page
    assert client.get(f"{PAGE}/check/check-375-dark.png").status_code == 404
    response = client.post(f"{PAGE}/check", data={"csrf_token": csrf_token(client, PAGE)}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"{PAGE}?notice=checked"
    page = client.get(response.headers["location"]).text
    assert "Render check done." in page and 'id="render-check-none"' not in page
    shots = re.findall(r'<img src="/preview/2024-10-25/check/(check-\d+-\w+\.png)" width="(\d+)"', page)
    assert sorted(shots) == [
        ("check-375-dark.png", "187"),
        ("check-375-light.png", "187"),
        ("check-600-dark.png", "300"),
        ("check-600-light.png", "300"),
    ]
    assert "<td>Outlook (Windows)</td><td>border-radius</td><td>unsupported</td><td>square corners" in page
    png = client.get(f"{PAGE}/check/check-600-dark.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    assert client.get(f"{PAGE}/check/email.eml").status_code == 404  # only the screenshots
    # an edit makes another email: the old report is not shown as this one's
    path = issuefile.path_for(web_settings.issues_dir, SLUG)
    path.write_text(path.read_text(encoding="utf-8").replace("Good evening.", "Good morning."), encoding="utf-8")
    assert 'id="render-check-none"' in client.get(PAGE).text


def test_without_chromium_the_page_says_so(web_settings: Settings, engine: Engine) -> None:
    settings = web_settings.model_copy(
        update={
            "render_check": web_settings.render_check.model_copy(
                update={"chromium": web_settings.config_path.parent / "no-chromium"}
            )
        }
    )
    app = create_app(settings, engine=engine, sender=MemorySender(), clock=Clock(), secret=SECRET)
    with TestClient(app, base_url=BASE_URL, headers={"Authorization": f"Bearer {EDITOR_TOKEN}"}) as client:
        page = client.get(PAGE).text
    assert "render check skipped: " in page and "no-chromium is not installed" in page
    assert 'id="run-check"' not in page
