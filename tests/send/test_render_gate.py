"""The render check gates the send (render_check.on_send): its errors block it like the
build's checks; without Chromium, auto sends and says so once, required refuses."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import Engine

from newsletter import send
from newsletter.config import load_settings
from newsletter.errors import BuildError
from newsletter.senders.memory import MemorySender
from newsletter.store import ledger
from tests.check.conftest import needs_chromium
from tests.check.test_check_cli import break_layout

from .conftest import add_subscribers


def _settings(write_config, database_url: str, **render_check: str):
    return load_settings(write_config({"database": {"url": database_url}, "render_check": render_check}), env={})


@pytest.mark.browser
@needs_chromium
def test_render_check_errors_block_the_send(
    project: Path, write_config, database_url: str, engine: Engine, issue_path: Path
) -> None:
    add_subscribers(engine, 3)
    break_layout(project)
    settings = _settings(write_config, database_url, on_send="auto")
    sender = MemorySender()
    with pytest.raises(BuildError, match=r"not sending: render check \(375 px, light\): \d+ px of horizontal overflow"):
        send.send_issue(settings, issue_path, engine=engine, sender=sender)
    assert sender.batches == [] and ledger.get_send(engine, "2024-10-25") is None
    assert (project / "build" / "check.json").exists()  # the report the editor can read


def test_without_chromium_auto_sends_and_says_so(
    write_config, database_url: str, engine: Engine, issue_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add_subscribers(engine, 3)
    settings = _settings(write_config, database_url, on_send="auto", chromium=str(tmp_path / "none"))
    sender = MemorySender()
    with caplog.at_level(logging.WARNING, logger="newsletter.send"):
        summary = send.send_issue(settings, issue_path, engine=engine, sender=sender)
    assert summary.sent == 3
    skipped = [r.getMessage() for r in caplog.records if "render check skipped" in r.getMessage()]
    assert skipped == [
        f"{issue_path}: render check skipped: {tmp_path / 'none'} is not installed (apt-get install chromium)"
    ]


def test_without_chromium_required_refuses(
    write_config, database_url: str, engine: Engine, issue_path: Path, tmp_path: Path
) -> None:
    add_subscribers(engine, 3)
    settings = _settings(write_config, database_url, on_send="required", chromium=str(tmp_path / "none"))
    sender = MemorySender()
    with pytest.raises(BuildError, match="render check required: .* is not installed"):
        send.send_issue(settings, issue_path, engine=engine, sender=sender)
    assert sender.batches == [] and ledger.get_send(engine, "2024-10-25") is None
