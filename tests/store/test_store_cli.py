"""The `newsletter db` and `newsletter subscribers` commands: output, exit codes, one-line
errors, help text."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer

from newsletter import cli

WriteConfig = Callable[..., Path]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)


@pytest.fixture
def run(
    write_config: WriteConfig, database_url: str, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    config = write_config({"database": {"url": database_url}})

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--config", str(config), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_every_command_has_help_text() -> None:
    group: Any = typer.main.get_command(cli.app)
    for name in ("db", "subscribers"):
        sub = group.commands[name]
        assert sub.help and sub.commands, name
        for command in sub.commands.values():
            assert command.help and command.help.strip(), f"{name} {command.name} has no help text"
            for param in command.params:
                if param.param_type_name == "option":
                    assert param.help, f"{name} {command.name} {param.opts} has no help text"
                else:
                    assert param.help, f"{name} {command.name} {param.name} has no help text"


def test_subscribers_help(run: Callable[..., tuple[int, str, str]]) -> None:
    code, out, _ = run("subscribers", "--help")
    assert code == 0
    for command in ("add", "import", "export", "list", "count", "stats", "unsubscribe", "remove", "expire"):
        assert command in out


def test_add_list_count_unsubscribe_remove(run: Callable[..., tuple[int, str, str]]) -> None:
    assert run("subscribers", "add", "Ann@Example.org", "--name", "Ann") == (0, "added Ann@Example.org (active)\n", "")
    assert run("subscribers", "add", "bob@example.org", "--status", "pending")[0] == 0

    code, out, err = run("subscribers", "add", "ann@example.org")
    assert (code, out) == (1, "")
    assert err == "error: ann@example.org is already on the list (active)\n"

    code, out, _ = run("subscribers", "list")
    assert code == 0 and out.splitlines()[0].startswith("Ann@Example.org\tAnn\tactive\t")
    assert run("subscribers", "list", "--status", "pending")[1].startswith("bob@example.org\t")
    assert run("subscribers", "count")[1] == "2\n"
    assert run("subscribers", "count", "--status", "active")[1] == "1\n"

    assert run("subscribers", "unsubscribe", "ANN@example.org") == (0, "Ann@Example.org is unsubscribed\n", "")
    assert run("subscribers", "remove", "ann@example.org", "--yes") == (0, "erased ann@example.org\n", "")
    code, _, err = run("subscribers", "add", "ann@example.org")
    assert code == 1 and "is suppressed" in err and err.count("\n") == 1

    code, out, _ = run("subscribers", "stats")
    assert code == 0 and "pending" in out and "suppressed" in out


def test_list_limit(run: Callable[..., tuple[int, str, str]]) -> None:
    for i in range(3):
        run("subscribers", "add", f"r{i}@example.org")
    code, out, err = run("subscribers", "list", "--limit", "2")
    assert code == 0 and len(out.splitlines()) == 2 and "showing the first 2" in err


def test_import_with_rejects_is_a_partial_success(
    run: Callable[..., tuple[int, str, str]], sample_csv: Path, tmp_path: Path
) -> None:
    rejects = tmp_path / "rejects.csv"
    code, out, err = run("subscribers", "import", str(sample_csv), "--rejects", str(rejects))
    assert code == cli.EXIT_PARTIAL_IMPORT == 4  # not 1: the good rows were imported
    assert out == f"imported {sample_csv}: 4 added, 0 updated, 0 unchanged, 1 duplicate merged, 6 rejected\n"
    lines = err.splitlines()
    assert f"{sample_csv}: line 5: invalid email address 'not-an-email'" in err
    assert f"{sample_csv}: line 13: has 5 cells, the header has 4" in lines
    assert lines[-1] == f"warning: {sample_csv}: 6 of 11 rows rejected; the others were imported (exit code 4)"
    assert "error:" not in err
    with rejects.open(encoding="utf-8", newline="") as f:
        assert len(list(csv.reader(f))) == 7

    code, out, _ = run("subscribers", "import", str(sample_csv))
    assert code == 4 and "0 added, 0 updated, 4 unchanged" in out


def test_import_keeps_an_existing_subscribers_source(run: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    assert run("subscribers", "add", "ann@example.org", "--source", "web")[0] == 0
    path = tmp_path / "list.csv"
    path.write_text("email,name\nann@example.org,Ann\nbob@example.org,Bob\n", encoding="utf-8")
    assert run("subscribers", "import", str(path), "--source", "crm-2024")[0] == 0
    _code, out, _ = run("subscribers", "export")
    rows = {row["email"]: row for row in csv.DictReader(out.splitlines())}
    assert rows["ann@example.org"]["source"] == "web"  # where they came from first
    assert rows["ann@example.org"]["name"] == "Ann"  # what the file says still updates the record
    assert rows["bob@example.org"]["source"] == "crm-2024"


def test_remove_without_a_terminal_needs_yes(run: Callable[..., tuple[int, str, str]]) -> None:
    assert run("subscribers", "add", "ann@example.org")[0] == 0
    code, out, err = run("subscribers", "remove", "ann@example.org")  # pytest's stdin is no terminal
    assert code == 2 and out == ""
    assert err == (
        "error: no terminal to confirm erasing ann@example.org on: pass --yes to erase it "
        "(see 'newsletter subscribers remove --help')\n"
    )
    assert run("subscribers", "count")[1] == "1\n"  # nothing erased
    assert run("subscribers", "remove", "ann@example.org", "--yes")[0] == 0


def test_import_clean_file(run: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    path = tmp_path / "ok.csv"
    path.write_text("email,name\nann@example.org,Ann\n", encoding="utf-8")
    assert run("subscribers", "import", str(path)) == (
        0,
        f"imported {path}: 1 added, 0 updated, 0 unchanged, 0 rejected\n",
        "",
    )


def test_import_file_errors_are_one_line(run: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("name\nAnn\n", encoding="utf-8")
    code, out, err = run("subscribers", "import", str(path))
    assert (code, out) == (1, "")
    assert err == f"error: {path}: line 1: no email column (the header has 'name')\n"


def test_export(run: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    run("subscribers", "add", "ann@example.org", "--name", "=cmd()")
    code, out, _ = run("subscribers", "export")
    assert code == 0 and out.splitlines()[1].startswith("ann@example.org,'=cmd(),active,cli,")
    target = tmp_path / "out.csv"
    code, out, err = run("subscribers", "export", "--status", "active", "--out", str(target))
    assert (code, out, err) == (0, "", f"exported 1 subscribers to {target}\n")
    assert target.read_text(encoding="utf-8").startswith("email,name,status")


def test_db_status_and_upgrade(write_config: WriteConfig, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config({"database": {"url": "sqlite:///fresh.db"}}))
    where = f"SQLite database {project / 'fresh.db'}"
    assert cli.main(["--config", config, "db", "status"]) == 1
    assert capsys.readouterr().err == f"error: {where} does not exist yet: run `newsletter db upgrade`\n"
    assert cli.main(["--config", config, "subscribers", "count"]) == 1
    assert "does not exist yet" in capsys.readouterr().err

    assert cli.main(["--config", config, "db", "upgrade"]) == 0
    assert capsys.readouterr().out.startswith(f"{where}: schema (empty) -> ")
    assert cli.main(["--config", config, "db", "upgrade"]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert cli.main(["--config", config, "db", "status"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert cli.main(["--config", config, "subscribers", "count"]) == 0
    assert capsys.readouterr().out == "0\n"


def test_unreachable_database(write_config: WriteConfig, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config({"database": {"url": "postgresql+psycopg://postgres:pw@127.0.0.1:1/test"}}))
    assert cli.main(["--config", config, "subscribers", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach database postgresql+psycopg://postgres:***@127.0.0.1:1/test: ")
    assert err.count("\n") == 1 and "pw" not in err


def test_bad_status_option(run: Callable[..., tuple[int, str, str]]) -> None:
    code, _, err = run("subscribers", "count", "--status", "gone")
    assert code == 1 and err.startswith("error: unknown status 'gone'")


def test_expire_forgets_unconfirmed_sign_ups(run: Callable[..., tuple[int, str, str]], engine: Any) -> None:
    import datetime as dt

    from newsletter.store import subscribers

    long_ago = dt.datetime(2024, 10, 1, tzinfo=dt.UTC)
    subscribers.sign_up(engine, "stale@example.org", consent=subscribers.Consent(at=long_ago), now=long_ago)
    subscribers.sign_up(engine, "fresh@example.org", consent=subscribers.Consent(at=subscribers.utcnow()))
    subscribers.add(engine, "ann@example.org")
    subscribers.unsubscribe(engine, "ann@example.org")
    subscribers.sign_up(engine, "ann@example.org", consent=subscribers.Consent(at=long_ago), now=long_ago)
    assert run("subscribers", "expire") == (
        0,
        "forgot 1 unconfirmed sign-ups, and 1 unconfirmed sign-ups of people already on the list\n",
        "",
    )
    assert subscribers.get(engine, "stale@example.org") is None
    assert subscribers.get(engine, "fresh@example.org") is not None
    assert subscribers.get(engine, "ann@example.org") is not None
    assert run("subscribers", "expire")[1].startswith("forgot 0 unconfirmed sign-ups, and 0")
