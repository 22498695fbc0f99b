"""`newsletter serve`: it refuses to listen beyond loopback without the secret key, and
on loopback it makes do with a random key and says so."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.web import server


def test_serve_refuses_to_be_reachable_without_a_secret_key(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY", raising=False)
    code = main(["--config", str(project / "config.yaml"), "serve", "--host", "0.0.0.0", "--port", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "refusing to serve on 0.0.0.0" in err and "NEWSLETTER_SECRET_KEY" in err


def test_serve_refuses_a_short_key_too(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "tooshort")
    code = main(["--config", str(project / "config.yaml"), "serve", "--host", "0.0.0.0"])
    assert code == 2 and "shorter than 32 characters" in capsys.readouterr().err


def test_on_loopback_a_missing_key_becomes_a_random_one(
    project: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY", raising=False)
    settings = server.bound_settings(load_settings(project / "config.yaml", env={}), "127.0.0.1", 8123)
    assert settings.web.port == 8123
    with caplog.at_level(logging.WARNING, logger="newsletter.web"):
        first, second = server.server_secret(settings), server.server_secret(settings)
    assert len(first) >= 32 and first != second
    assert "using a random secret key" in caplog.text and first not in caplog.text


def test_a_configured_key_is_used_as_is(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k" * 40)
    settings = server.bound_settings(load_settings(project / "config.yaml", env={}), "::", None)
    assert settings.web.host == "::" and server.server_secret(settings) == "k" * 40
