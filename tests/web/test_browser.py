"""End to end in Debian's Chromium (Playwright) against `newsletter serve` started as a
subprocess on 127.0.0.1 (tests/helpers/serve.py), on a temporary project with the outbox sender and a SQLite
database made by `newsletter db upgrade`. Screenshots of the preview go to
$NEWSLETTER_TEST_ARTIFACTS, or test-artifacts/ in pytest's temporary folder. Skipped only when /usr/bin/chromium is missing outside CI."""

from __future__ import annotations

import email
import email.policy
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from newsletter import issuefile
from newsletter.browser import CHROMIUM, CHROMIUM_ARGS  # the render check's browser, as it runs it
from newsletter.store import subscribers
from newsletter.store.db import create_store_engine

SLUG = "2024-10-25"
PREVIEW_TOKEN = "browser-preview-token-" + "p" * 20

pytestmark = pytest.mark.browser
if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip("Debian's chromium is not installed (it is required when CI is set)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

from tests.helpers.serve import clean_env, cli, serving  # noqa: E402
from tests.senders.conftest import free_port  # noqa: E402


@dataclass
class Server:
    url: str
    config: Path
    project: Path
    env: dict[str, str]

    def cli(self, *args: str) -> str:
        return cli(self.config, self.env, *args)

    def status_of(self, address: str) -> str:
        engine = create_store_engine(f"sqlite:///{self.project / 'newsletter.db'}")
        try:
            found = subscribers.get(engine, address)
        finally:
            engine.dispose()
        assert found is not None
        return found.status

    @property
    def issue_path(self) -> Path:
        return self.project / "issues" / f"{SLUG}.yaml"


def wait_for(condition: Callable[[], object], what: str, limit: float = 10.0) -> object:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture
def server(project: Path, write_config: Callable[..., Path], tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    config = write_config(
        {
            "publication": {"public_url": f"http://127.0.0.1:{port}"},
            "database": {"url": "sqlite:///newsletter.db"},
            "delivery": {
                "backend": "outbox",
                "outbox": {"dir": "outbox"},
                "test_recipients": ["editors@news.example.org"],
            },
        }
    )
    env = clean_env(
        {"NEWSLETTER_SECRET_KEY": "browser-test-secret-" + "s" * 32, "NEWSLETTER_PREVIEW_TOKEN": PREVIEW_TOKEN}
    )
    cli(config, env, "db", "upgrade")
    cli(config, env, "subscribers", "add", "reader@example.net", "--name", "Ann Reader")
    with serving(config, env, tmp_path / "serve.log", port=port) as served:
        yield Server(url=served.url, config=config, project=project, env=env)
    served_log = served.log_text()
    assert env["NEWSLETTER_SECRET_KEY"] not in served_log and PREVIEW_TOKEN not in served_log


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A visitor's browser."""
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def editor_page(browser: Browser) -> Iterator[Page]:
    """An editor's browser: it answers the preview's basic-auth prompt with the token."""
    context = browser.new_context(
        viewport={"width": 1500, "height": 1000}, http_credentials={"username": "editor", "password": PREVIEW_TOKEN}
    )
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: never the checkout (the tests leave it alone)."""
    given = os.environ.get("NEWSLETTER_TEST_ARTIFACTS")
    return Path(given) if given else tmp_path_factory.getbasetemp() / "test-artifacts"


def shot(page: Page, name: str, artifacts: Path) -> None:
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts / name), full_page=True)


def read_eml(path: Path) -> EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_an_editor_previews_sends_a_test_and_approves(server: Server, editor_page: Page, artifacts: Path) -> None:
    page = editor_page
    page.goto(f"{server.url}/preview")
    subject = issuefile.load(server.issue_path).subject
    expect(page.locator(".status-draft")).to_have_count(1)
    page.get_by_role("link", name=subject).click()
    expect(page).to_have_url(f"{server.url}/preview/{SLUG}")
    expect(page.locator("#desktop-frame")).to_be_visible()
    expect(page.frame_locator("#mobile-frame").get_by_text("Diplomacy Watch").first).to_be_visible()
    expect(page.get_by_text("bytes of Gmail's 102,400-byte clipping limit")).to_be_visible()
    shot(page, "preview-side-by-side.png", artifacts)

    page.get_by_role("link", name="Mobile", exact=True).click()
    expect(page).to_have_url(re.compile(r"view=mobile$"))
    expect(page.locator("#desktop-frame")).to_have_count(0)
    page.wait_for_load_state("load")  # the URL changes before the stylesheet applies (the frame's border)
    box = page.locator("#mobile-frame").bounding_box()
    assert box is not None and box["width"] == 375
    mobile_body = page.frame_locator("#mobile-frame").locator("body")
    expect(mobile_body).to_contain_text("Unsubscribe")
    shot(page, "preview-mobile.png", artifacts)

    page.get_by_role("link", name="Plain text").click()
    text = page.locator("#plain-text").inner_text()
    assert "1100 Example Avenue NW" in text and "Unsubscribe: http" in text and "<" not in text.split("\n")[0]
    shot(page, "preview-text.png", artifacts)

    page.get_by_role("link", name="Side by side").click()
    page.get_by_role("button", name="Send test").click()
    expect(page.get_by_role("status")).to_have_text("Test sent to editors@news.example.org.")
    sent = list((server.project / "outbox" / f"{SLUG}-test").glob("*.eml"))
    assert len(sent) == 1 and read_eml(sent[0])["Subject"] == f"[TEST] {subject}"

    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#status")).to_have_text("approved")
    assert issuefile.load(server.issue_path).status == "approved"
    shot(page, "preview-approved.png", artifacts)


def test_the_preview_reloads_when_the_issue_file_changes(server: Server, editor_page: Page) -> None:
    page = editor_page
    page.goto(f"{server.url}/preview/{SLUG}")
    expect(page.locator("h1")).not_to_have_text("Edited while open")
    issue = issuefile.load(server.issue_path)
    issuefile.save(issue.model_copy(update={"subject": "Edited while open"}), server.issue_path)
    expect(page.locator("h1")).to_have_text("Edited while open", timeout=10_000)
    template = server.project / "templates" / "email.txt.j2"
    template.write_text(
        template.read_text(encoding="utf-8").replace("Past issues:", "Earlier issues:"), encoding="utf-8"
    )
    expect(page.locator("#plain-text")).to_contain_text("Earlier issues:", timeout=10_000)


def test_the_preview_waits_on_the_long_poll_and_polls_where_it_fails(server: Server, editor_page: Page) -> None:
    """The page reloads through ``changes``; where that request fails (a proxy cutting
    long requests: here the browser aborts it) it falls back to polling ``version``."""
    page = editor_page
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    with page.expect_request(lambda request: "/changes?since=" in request.url):
        page.goto(f"{server.url}/preview/{SLUG}")
    page.wait_for_timeout(1200)  # two of the fallback's intervals: no polling while the long poll works
    assert not any(url.endswith("/version") for url in asked), asked
    page.route(re.compile(r"/changes\?since="), lambda route: route.abort())
    with page.expect_request(lambda request: request.url.endswith("/version"), timeout=10_000):
        page.reload()
    issue = issuefile.load(server.issue_path)
    issuefile.save(issue.model_copy(update={"subject": "Edited behind a proxy"}), server.issue_path)
    expect(page.locator("h1")).to_have_text("Edited behind a proxy", timeout=10_000)


def test_a_subscriber_unsubscribes_from_a_sent_email(server: Server, page: Page) -> None:
    server.cli("approve", str(server.issue_path))
    server.cli("send", str(server.issue_path))
    [eml] = list((server.project / "outbox" / SLUG).glob("*reader@example.net.eml"))
    message = read_eml(eml)
    header = re.fullmatch(r"<(http://127\.0\.0\.1:\d+/unsubscribe/[A-Za-z0-9_-]+)>", str(message["List-Unsubscribe"]))
    assert header and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert f'href="{header.group(1)}"' in html  # the footer link is the same
    page.goto(header.group(1))
    expect(page.get_by_role("heading")).to_have_text("Unsubscribe from Statecraft Review?")
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.locator("#result")).to_have_text("You are unsubscribed")
    assert server.status_of("reader@example.net") == "unsubscribed"

    page.goto(f"{server.url}/archive")
    page.get_by_role("link", name=issuefile.load(server.issue_path).subject).click()
    web_version = page.content()
    assert "%%" not in web_version and "/unsubscribe/" not in web_version


def test_a_visitor_signs_up_and_confirms(server: Server, page: Page) -> None:
    page.goto(f"{server.url}/subscribe")
    page.get_by_label("Email address").fill("new.reader@example.org")
    page.get_by_label("Name").fill("Nia")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.locator("#result")).to_have_text("Check your inbox")
    assert server.status_of("new.reader@example.org") == "pending"
    outbox = server.project / "outbox" / "confirmation"
    found = wait_for(lambda: list(outbox.glob("*new.reader@example.org.eml")), "the confirmation email", 10)
    assert isinstance(found, list)
    text = read_eml(found[0]).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    link = re.search(r"http://127\.0\.0\.1:\d+/confirm/[A-Za-z0-9_-]+", text)
    assert link
    page.goto(link.group(0))
    expect(page.get_by_role("heading")).to_have_text("Confirm your subscription to Statecraft Review")
    assert server.status_of("new.reader@example.org") == "pending"  # opening the link is not consent
    page.get_by_role("button", name="Confirm my subscription").click()
    expect(page.locator("#result")).to_have_text("You are subscribed")
    assert server.status_of("new.reader@example.org") == "active"


def test_an_editor_reads_the_issue_report_on_a_phone(server: Server, browser: Browser, artifacts: Path) -> None:
    import http.client
    from urllib.parse import urlsplit

    server.cli("approve", str(server.issue_path))
    server.cli("send", str(server.issue_path))
    [eml] = list((server.project / "outbox" / SLUG).glob("*reader@example.net.eml"))
    html = read_eml(eml).get_body(("html",)).get_content()  # type: ignore[union-attr]
    tracked = next(href for href in re.findall(r'href="([^"]+)"', html) if "/r/" in href)
    # the reader's click: the redirect names the article (another site: not followed)
    where = urlsplit(tracked)
    connection = http.client.HTTPConnection(where.hostname or "", where.port, timeout=10)
    connection.request("GET", where.path)
    answer = connection.getresponse()
    target = answer.getheader("Location", "")
    assert answer.status in (302, 303, 307) and target.startswith("https://")
    connection.close()

    context = browser.new_context(
        viewport={"width": 375, "height": 800}, http_credentials={"username": "editor", "password": PREVIEW_TOKEN}
    )
    page = context.new_page()
    page.goto(f"{server.url}/reports/{SLUG}")
    expect(page.get_by_role("heading", level=1)).to_have_text(issuefile.load(server.issue_path).subject)
    expect(page.locator(".report-chart svg")).to_be_visible()
    clicked = page.locator(".report-links tbody tr").filter(has_text=target).first
    expect(clicked.locator("td").last).to_have_text("1")  # the click, counted for its link
    # a phone shows the page without sideways scrolling: the links table scrolls in its own box
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    shot(page, "report-phone.png", artifacts)
    context.close()
