"""config.yaml: loading, validation errors that name the key and the file, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.config import load_settings
from newsletter.errors import ConfigError


def test_repository_config_loads_with_absolute_paths(project: Path) -> None:
    settings = load_settings(project / "config.yaml", env={})
    assert settings.publication.name == "Statecraft Review"
    assert settings.templates.dir == project / "templates"
    assert settings.issues_dir == project / "issues"
    assert settings.delivery.outbox.dir == project / "outbox"
    assert settings.sources is not None
    assert Path(settings.sources.roundup.feed) == project / "samples/feeds/roundup.rss"
    assert settings.limits.html_max_bytes == 102_400


def test_unknown_key_is_named_with_its_path_and_file(write_config) -> None:
    path = write_config({"publication": {"nmae": "typo"}})
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert str(err.value) == f"{path}: publication.nmae: unknown key"


def test_missing_postal_address_is_an_error(write_config) -> None:
    path = write_config({"publication": {"postal_address": "  "}})
    with pytest.raises(ConfigError, match=r"publication\.postal_address: .*CAN-SPAM"):
        load_settings(path, env={})


def test_wrong_type_names_the_key(write_config) -> None:
    path = write_config({"limits": {"html_max_bytes": "lots"}})
    with pytest.raises(ConfigError, match=r"limits\.html_max_bytes: Input should be a valid integer"):
        load_settings(path, env={})


def test_header_values_must_be_single_lines(write_config) -> None:
    path = write_config({"sender": {"from_name": "Statecraft\nBcc: victim@example.net"}})
    with pytest.raises(ConfigError, match=r"sender\.from_name: must be a single line"):
        load_settings(path, env={})


def test_unknown_time_zone(write_config) -> None:
    path = write_config({"publication": {"timezone": "Mars/Olympus_Mons"}})
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus_Mons'"):
        load_settings(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: file not found"):
        load_settings(tmp_path / "nowhere.yaml", env={})


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("publication:\n  name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config\.yaml: line \d+, column \d+"):
        load_settings(path, env={})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_settings(path, env={})


def test_config_location_from_environment(project: Path, tmp_path: Path) -> None:
    settings = load_settings(None, env={"NEWSLETTER_CONFIG": str(project / "config.yaml")})
    assert settings.config_path == project / "config.yaml"


def test_database_url_from_environment(project: Path) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    settings = load_settings(project / "config.yaml", env={"NEWSLETTER_DATABASE_URL": url})
    assert settings.database.url == url


def test_secret_comes_from_the_named_variable_only(project: Path, monkeypatch) -> None:
    settings = load_settings(project / "config.yaml", env={})
    monkeypatch.delenv("SENDGRID_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="SENDGRID_API_KEY, which is not set") as err:
        settings.secret(settings.delivery.sendgrid.api_key_env, "the SendGrid API key")
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.secret-value")
    assert settings.secret("SENDGRID_API_KEY", "the SendGrid API key") == "SG.secret-value"
    assert "SG.secret-value" not in str(err.value)


def test_secret_env_names_are_validated(write_config) -> None:
    path = write_config({"delivery": {"sendgrid": {"api_key_env": "SG.actual-key-pasted-here"}}})
    with pytest.raises(ConfigError, match=r"delivery\.sendgrid\.api_key_env"):
        load_settings(path, env={})
