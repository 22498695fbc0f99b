"""The editors' preview: the issue list, one issue's frames, text, size and checks, send
test, approve, the live-reload fingerprint, and who may see it."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from newsletter import issuefile
from newsletter.config import Settings
from newsletter.senders.memory import MemorySender

from .conftest import csrf_token

SLUG = "2024-10-25"
PAGE = f"/preview/{SLUG}"


pytestmark = pytest.mark.usefixtures("preview_token")  # set before the app is built


@pytest.fixture
def client(editor_client: TestClient) -> TestClient:
    return editor_client


def issue_path(settings: Settings) -> Path:
    return issuefile.path_for(settings.issues_dir, SLUG)


def test_the_list_shows_every_issue_with_its_status(client: TestClient, web_settings: Settings) -> None:
    (web_settings.issues_dir / "2024-11-01.yaml").write_text("subject: [broken\n", encoding="utf-8")
    response = client.get("/preview")
    assert response.status_code == 200
    assert f'href="/preview/{SLUG}"' in response.text
    assert "status-draft" in response.text
    assert "2024-11-01.yaml" in response.text and "status-invalid" in response.text


def test_one_issue_side_by_side(client: TestClient, web_settings: Settings) -> None:
    response = client.get(PAGE)
    assert response.status_code == 200
    page = response.text
    assert f'id="desktop-frame" title="Desktop preview" src="/preview/{SLUG}/email.html"' in page
    assert 'id="mobile-frame" title="Mobile preview" width="375"' in page
    assert '<pre id="plain-text">' in page and web_settings.publication.postal_address in page
    assert re.search(r"HTML size <strong>[\d,]+</strong> bytes of Gmail's 102,400-byte clipping limit", page)
    assert "Checks" in page and ">Send test</button>" in page and ">Approve</button>" in page
    assert 'src="/static/preview.js"' in page and f'data-version-url="/preview/{SLUG}/version"' in page


def test_the_views(client: TestClient) -> None:
    mobile = client.get(f"{PAGE}?view=mobile").text
    assert "mobile-frame" in mobile and "desktop-frame" not in mobile and "plain-text" not in mobile
    text = client.get(f"{PAGE}?view=text").text
    assert "plain-text" in text and "<iframe" not in text
    assert client.get(f"{PAGE}?view=sideways").status_code == 400


def test_the_frames_content(client: TestClient, web_settings: Settings) -> None:
    html = client.get(f"{PAGE}/email.html")
    assert html.status_code == 200 and html.text.startswith("<")
    assert "%%" not in html.text and "frame-ancestors 'self'" in html.headers["content-security-policy"]
    assert html.headers["x-frame-options"] == "SAMEORIGIN"
    text = client.get(f"{PAGE}/email.txt")
    assert text.headers["content-type"].startswith("text/plain") and "Unsubscribe: http" in text.text
    page = client.get(PAGE)
    assert page.headers["x-frame-options"] == "DENY"


def test_the_build_checks_are_shown(client: TestClient, web_settings: Settings) -> None:
    path = issue_path(web_settings)
    issue = issuefile.load(path)
    assert issue.roundup is not None and issue.roundup.image is not None
    image = issue.roundup.image.model_copy(update={"alt": None})
    issuefile.save(issue.model_copy(update={"roundup": issue.roundup.model_copy(update={"image": image})}), path)
    page = client.get(PAGE).text
    assert '<li class="check-warning"><strong>warning</strong> image without alt text' in page


def test_the_fingerprint_changes_with_the_issue_and_the_templates(client: TestClient, web_settings: Settings) -> None:
    def version() -> str:
        response = client.get(f"{PAGE}/version")
        assert response.status_code == 200
        return str(response.json()["version"])

    first = version()
    assert version() == first
    path = issue_path(web_settings)
    path.write_text(path.read_text(encoding="utf-8").replace("subject:", "subject: Edited", 1) + "\n", encoding="utf-8")
    second = version()
    assert second != first
    template = web_settings.templates.dir / "email.txt.j2"
    template.write_text(template.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    os.utime(template, ns=(template.stat().st_atime_ns, template.stat().st_mtime_ns + 10**9))
    assert version() != second


def test_the_long_poll_answers_when_the_issue_is_saved(client: TestClient, web_settings: Settings) -> None:
    """The page waits on ``changes``: it answers with the new fingerprint as soon as the
    file changes (here well before its 10 s deadline), unchanged after the deadline."""
    first = client.get(f"{PAGE}/version").json()["version"]
    unchanged = client.get(f"{PAGE}/changes", params={"since": first, "wait": "0.2"})
    assert unchanged.status_code == 200 and unchanged.json() == {"version": first}
    assert unchanged.headers["cache-control"] == "no-store"
    assert client.get(f"{PAGE}/changes", params={"since": "older"}).json() == {"version": first}  # at once

    answered: list[tuple[float, str]] = []

    def wait() -> None:
        response = client.get(f"{PAGE}/changes", params={"since": first, "wait": "10"})
        answered.append((time.monotonic(), response.json()["version"]))

    waiting = threading.Thread(target=wait)
    waiting.start()
    time.sleep(0.3)
    assert not answered  # still waiting: nothing changed
    path = issue_path(web_settings)
    saved = time.monotonic()
    path.write_text(path.read_text(encoding="utf-8").replace("subject:", "subject: Edited", 1), encoding="utf-8")
    waiting.join(timeout=15)
    assert answered, "the long poll did not answer"
    (when, version), now = answered[0], client.get(f"{PAGE}/version").json()["version"]
    assert version == now != first and when - saved < 5


def test_the_page_reloads_by_the_long_poll_and_falls_back_to_polling(client: TestClient) -> None:
    page = client.get(PAGE).text
    assert f'data-changes-url="/preview/{SLUG}/changes"' in page
    script = client.get("/static/preview.js").text
    assert "changesUrl" in script and "setTimeout(poll, every)" in script


def test_a_broken_file_shows_the_error_and_keeps_reloading(client: TestClient, web_settings: Settings) -> None:
    issue_path(web_settings).write_text("slug: 2024-10-25\nsubject: [unclosed\n", encoding="utf-8")
    response = client.get(PAGE)
    assert response.status_code == 400
    assert 'id="build-error"' in response.text and "2024-10-25.yaml" in response.text
    assert 'src="/static/preview.js"' in response.text
    assert client.get(f"{PAGE}/version").status_code == 200


def test_send_test_goes_to_the_editors(client: TestClient, sender: MemorySender, web_settings: Settings) -> None:
    token = csrf_token(client, PAGE)
    response = client.post(f"{PAGE}/send-test", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"{PAGE}?notice=test-sent"
    assert [d.recipient.email for b in sender.batches for d in b.deliveries] == web_settings.delivery.test_recipients
    assert sender.batches[0].email.subject.startswith("[TEST] ")
    notice = client.get(response.headers["location"]).text
    assert "Test sent to editors@news.example.org." in notice
    assert issuefile.load(issue_path(web_settings)).status == "draft"


def test_approve(client: TestClient, web_settings: Settings) -> None:
    token = csrf_token(client, PAGE)
    response = client.post(f"{PAGE}/approve", data={"csrf_token": token})  # follows the redirect
    assert response.status_code == 200 and "Approved" in response.text
    issue = issuefile.load(issue_path(web_settings))
    assert issue.status == "approved" and issue.approved_at is not None
    assert ">Approve</button>" not in response.text


def test_a_sent_issue_cannot_be_approved(client: TestClient, web_settings: Settings) -> None:
    path = issue_path(web_settings)
    issuefile.save(issuefile.load(path).model_copy(update={"status": "sent"}), path)
    response = client.post(f"{PAGE}/approve", data={"csrf_token": csrf_token(client, PAGE)})
    assert response.status_code == 400 and "already sent" in response.text
    assert issuefile.load(path).status == "sent"


def test_actions_need_the_csrf_token(client: TestClient, sender: MemorySender, web_settings: Settings) -> None:
    csrf_token(client, PAGE)
    assert client.post(f"{PAGE}/send-test").status_code == 403
    assert client.post(f"{PAGE}/approve", data={"csrf_token": "1.forged"}).status_code == 403
    assert not sender.batches and issuefile.load(issue_path(web_settings)).status == "draft"


def test_unknown_and_malformed_issues_are_404(client: TestClient, sender: MemorySender) -> None:
    token = csrf_token(client, PAGE)
    for slug in ("1999-01-01", "UPPER", "a..b", "a" * 90):
        for response in (
            client.get(f"/preview/{slug}"),
            client.get(f"/preview/{slug}/email.html"),
            client.get(f"/preview/{slug}/email.txt"),
            client.get(f"/preview/{slug}/version"),
            client.get(f"/preview/{slug}/changes", params={"wait": "0"}),
            client.post(f"/preview/{slug}/approve", data={"csrf_token": token}),
            client.post(f"/preview/{slug}/send-test", data={"csrf_token": token}),
        ):
            assert response.status_code == 404, (slug, response.request.url)
    assert not sender.batches
