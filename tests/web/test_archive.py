"""The archive: sent issues only, and each issue's web version with nobody's personal
links or address in it."""

from __future__ import annotations

import re
from pathlib import Path

import lxml.html
from fastapi.testclient import TestClient

from newsletter import issuefile
from newsletter.config import Settings
from newsletter.render import SAMPLE_RECIPIENT_TOKEN
from tests.conftest import FORGED_IMAGE, forged_placeholder_issue


def mark_sent(settings: Settings, slug: str = "2024-10-25") -> Path:
    path = issuefile.path_for(settings.issues_dir, slug)
    issuefile.save(issuefile.load(path).model_copy(update={"status": "sent"}), path)
    return path


def test_the_list_shows_sent_issues_only(client: TestClient, web_settings: Settings) -> None:
    empty = client.get("/archive")
    assert empty.status_code == 200 and "No issues have been sent yet" in empty.text
    mark_sent(web_settings)
    draft = issuefile.load(issuefile.path_for(web_settings.issues_dir, "2024-10-25"))
    issuefile.save(
        draft.model_copy(update={"slug": "2024-11-01", "status": "draft", "subject": "Draft only"}),
        issuefile.path_for(web_settings.issues_dir, "2024-11-01"),
    )
    page = client.get("/archive").text
    assert 'href="/archive/2024-10-25"' in page and draft.subject in page
    assert "Draft only" not in page and "2024-11-01" not in page
    assert client.get("/archive/2024-11-01").status_code == 404


def test_the_web_version_has_no_working_personal_links(client: TestClient, web_settings: Settings) -> None:
    mark_sent(web_settings)
    response = client.get("/archive/2024-10-25")
    assert response.status_code == 200
    html = response.text
    assert "%%" not in html and SAMPLE_RECIPIENT_TOKEN not in html and "/unsubscribe/" not in html
    assert "reader@example.com" not in html
    assert re.search(r'<a href="http://127.0.0.1:8000/subscribe"[^>]*>Unsubscribe</a>', html)
    assert web_settings.publication.postal_address in html
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_placeholder_lookalikes_in_content_stay_in_the_web_version(client: TestClient, web_settings: Settings) -> None:
    path = issuefile.path_for(web_settings.issues_dir, "2024-10-25")
    issuefile.save(forged_placeholder_issue().model_copy(update={"status": "sent"}), path)
    html = client.get("/archive/2024-10-25").text
    shown = " ".join(lxml.html.document_fromstring(html).text_content().split())
    assert "Write to %%email%% or %%unsubscribe_url%%." in shown and "Reply to %%email%% (%%name%%)." in shown
    assert f'src="{FORGED_IMAGE.replace("&", "&amp;")}"' in html
    assert not re.search(r"%%\w+-[0-9a-f]+%%", html) and "/unsubscribe/" not in html


def test_unknown_draft_and_malformed_slugs_are_404(client: TestClient, web_settings: Settings) -> None:
    for slug in ("2024-10-25", "1999-01-01", "..%2F..%2Fconfig", "UPPER", "a" * 100, "%00", "-x"):
        response = client.get(f"/archive/{slug}")
        assert response.status_code == 404, slug
        assert "There is no" in response.text


def test_a_broken_issue_file_does_not_break_the_archive(client: TestClient, web_settings: Settings) -> None:
    mark_sent(web_settings)
    (web_settings.issues_dir / "2024-11-08.yaml").write_text("slug: [unclosed\n", encoding="utf-8")
    assert client.get("/archive").status_code == 200
    assert client.get("/archive/2024-10-25").status_code == 200
    response = client.get("/archive/2024-11-08")
    assert 400 <= response.status_code < 500
