"""config.yaml: loading, validation errors that name the key and the file, secrets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from newsletter.config import load_settings
from newsletter.errors import ConfigError
from newsletter.yamlfile import MAX_ALIASES


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


# --- hostile and sloppy YAML (issue 13, item 4) ----------------------------------------

BILLION_LAUGHS = (
    "\n".join(
        ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    )
    + "\n"
)


def test_a_billion_laughs_config_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(BILLION_LAUGHS + "publication: *i\n", encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert time.perf_counter() - started < 2  # was 38 s and a MemoryError
    assert str(err.value) == (
        f"{path}: line 3, column 29: more than {MAX_ALIASES} aliases (*b is one too many); refused"
    )


def test_a_few_aliases_are_fine(write_config) -> None:
    path = write_config()
    path.write_text(
        path.read_text(encoding="utf-8")
        + "schedule: {mode: approve, send: &friday {day: fri, time: '09:00'}, draft: *friday}\n",
        encoding="utf-8",
    )
    assert load_settings(path, env={}).schedule.draft == load_settings(path, env={}).schedule.send


def test_a_duplicate_key_names_both_lines(write_config) -> None:
    path = write_config()
    lines = path.read_text(encoding="utf-8").splitlines()
    first = lines.index("database:") + 1
    path.write_text("\n".join(lines) + "\ndatabase:\n  url: sqlite:///other.db\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert str(err.value) == (
        f"{path}: line {len(lines) + 1}, column 1: duplicate key 'database' (first on line {first})"
    )


def test_a_duplicate_key_in_a_nested_flow_mapping(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("publication: {name: A, name: B}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"line 1, column 24: duplicate key 'name' \(first on line 1\)"):
        load_settings(path, env={})


def test_default_paths_are_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not to the current directory: tests and cron jobs run from anywhere (item 6)."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "config.yaml").write_text(
        "publication: {name: P, website_url: 'https://p.example', public_url: 'https://p.example',\n"
        "              organisation: P, postal_address: '1 Main St'}\n"
        "sender: {from_name: P, from_address: news@p.example}\n"
        "sources: {roundup: {feed: feeds/roundup.rss}, teasers: {feeds: ['https://p.example/a.atom', feeds/b.atom]}}\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("site/config.yaml"), env={})
    assert settings.sources is not None
    assert settings.sources.fetch.cache_dir == folder / ".cache/feeds"
    assert settings.templates.dir == folder / "templates"
    assert settings.output.dir == folder / "build"
    assert settings.issues_dir == folder / "issues"
    assert settings.delivery.outbox.dir == folder / "outbox"
    assert settings.sources.roundup.feed == str(folder / "feeds/roundup.rss")
    assert settings.sources.teasers.feeds == ["https://p.example/a.atom", str(folder / "feeds/b.atom")]
