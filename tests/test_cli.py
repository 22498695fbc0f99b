"""The CLI: every command has help; build writes its files or, on bad input, one clear
line, a non-zero exit and nothing at all."""

from __future__ import annotations

import email
import email.policy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from newsletter.cli import app, main

from .conftest import EXAMPLE_ISSUE, ROOT


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command and sub-command (typer vendors its own click: duck-typed here)."""
    found = []
    for name, command in group.commands.items():
        found.append(((*prefix, name), command))
        if hasattr(command, "commands"):
            found.extend(_commands(command, (*prefix, name)))
    return found


def test_every_command_has_help_text(capsys) -> None:
    group = typer.main.get_command(app)
    commands = _commands(group)
    assert {("build",), ("preview",)} <= {path for path, _ in commands}
    for path, command in commands:
        assert (command.help or "").strip(), f"`newsletter {' '.join(path)}` has no help text"
        assert main([*path, "--help"]) == 0
        out = capsys.readouterr().out
        assert "Usage:" in out and (command.help or "").split("\n")[0].split()[0] in out
        for param in command.params:
            if getattr(param, "param_type_name", "") == "option" and param.name != "help":
                assert (param.help or "").strip(), f"`newsletter {' '.join(path)}` {param.opts} has no help"


def test_top_level_help(capsys) -> None:
    assert main(["--help"]) == 0
    assert "weekly email newsletter" in capsys.readouterr().out


def test_build_writes_three_files_and_prints_sizes(project: Path, capsys) -> None:
    out = project / "out"
    code = main(
        ["--config", str(project / "config.yaml"), "build", str(project / "issues/2024-10-25.yaml"), "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("email.html", "email.txt", "email.eml"):
        assert (out / name).stat().st_size > 1000
        assert name in printed
    assert "bytes)" in printed
    msg = email.message_from_bytes((out / "email.eml").read_bytes(), policy=email.policy.default)
    assert msg["To"] == "Sample Reader <reader@example.com>"
    assert "%%" not in (out / "email.html").read_text(encoding="utf-8")


def test_build_defaults_to_the_output_dir_from_config(project: Path) -> None:
    assert main(["--config", str(project / "config.yaml"), "build", str(project / "issues/2024-10-25.yaml")]) == 0
    assert (project / "build/email.eml").exists()


def test_over_size_build_fails_and_writes_nothing(project: Path, write_config, capsys) -> None:
    config = write_config({"limits": {"html_warn_bytes": 1000, "html_max_bytes": 2000}})
    out = project / "out"
    code = main(["--config", str(config), "build", str(project / "issues/2024-10-25.yaml"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert not out.exists()
    assert "error:" in err and "over the 2,000-byte limit" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_warning_is_printed_but_build_succeeds(project: Path, write_config, capsys) -> None:
    config = write_config({"limits": {"html_warn_bytes": 20_000}})
    assert (
        main(["--config", str(config), "build", str(project / "issues/2024-10-25.yaml"), "--out", str(project / "o")])
        == 0
    )
    assert "warning:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "setup, expected",
    [
        ("missing-config", "config.yaml: file not found"),
        ("unknown-key", "publication.colour: unknown key"),
        ("missing-issue", "nope.yaml: file not found"),
        ("bad-issue", "teasers[0].url: required key is missing"),
        ("missing-template", "email.txt.j2: template not found"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(
    project: Path, write_config, capsys, setup: str, expected: str
) -> None:
    config = project / "config.yaml"
    issue = project / "issues/2024-10-25.yaml"
    if setup == "missing-config":
        config.unlink()
    elif setup == "unknown-key":
        write_config({"publication": {"colour": "red"}})
    elif setup == "missing-issue":
        issue = project / "issues/nope.yaml"
    elif setup == "bad-issue":
        issue.write_text(
            issue.read_text(encoding="utf-8").replace(
                "    url: https://news.example.org/security-strategy-rare-earths\n", ""
            ),
            encoding="utf-8",
        )
    elif setup == "missing-template":
        (project / "templates/email.txt.j2").unlink()
    out = project / "out"
    code = main(["--config", str(config), "build", str(issue), "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not out.exists()


def test_debug_shows_the_traceback(project: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "newsletter",
            "--config",
            str(project / "missing.yaml"),
            "--debug",
            "build",
            str(EXAMPLE_ISSUE),
        ],
        capture_output=True,
        text=True,
        cwd=project,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_config_from_environment_variable(project: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "build", "issues/2024-10-25.yaml", "--out", "o"],
        capture_output=True,
        text=True,
        cwd=project,
        env={"NEWSLETTER_CONFIG": str(project / "config.yaml"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert (project / "o/email.html").exists()


def test_usage_error_exit_code(capsys) -> None:
    assert main(["build"]) == 2
    assert "Missing argument" in capsys.readouterr().err


def test_preview_prints_a_file_url(project: Path, capsys) -> None:
    code = main(
        [
            "--config",
            str(project / "config.yaml"),
            "preview",
            str(project / "issues/2024-10-25.yaml"),
            "--out",
            str(project / "p"),
        ]
    )
    assert code == 0
    assert f"file://{project}/p/email.html" in capsys.readouterr().out


def test_console_script_is_installed() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "newsletter"), "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0 and "build" in result.stdout


# --- one way to print errors (issue 13, items 8 and 11) --------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["run", "--as-of", "next week"],
            "error: --as-of: not an ISO 8601 date or time: 'next week' (see 'newsletter run --help')",
        ),
        (
            ["draft", "--as-of", "next week"],
            "error: --as-of: not an ISO 8601 date or time: 'next week' (see 'newsletter draft --help')",
        ),
        (
            ["gather", "--as-of", "next week"],
            "error: --as-of: not an ISO 8601 date or time: 'next week' (see 'newsletter gather --help')",
        ),
        (
            ["send", "issues/2024-10-25.yaml", "--settle-ambiguous", "maybe"],
            "error: --settle-ambiguous: use sent or resend (see 'newsletter send --help')",
        ),
        (["serve", "--port", "http"], "error: --port: "),
        (["build", "--colour", "x.yaml"], "error: No such option: --colour (Possible options: --out)"),
    ],
    ids=["run", "draft", "gather", "send", "serve", "unknown-option"],
)
def test_a_bad_option_value_is_one_line(project: Path, args: list[str], expected: str) -> None:
    """The same mistake gives the same words from every command: no usage box."""
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(project / "config.yaml"), *args],
        capture_output=True,
        text=True,
        cwd=project,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(expected), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_debug_after_the_command_shows_the_traceback(project: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "newsletter",
            "--config",
            str(project / "config.yaml"),
            "build",
            str(project / "issues/missing.yaml"),
            "--debug",
        ],
        capture_output=True,
        text=True,
        cwd=project,
    )
    assert result.returncode != 0
    assert "No such option" not in result.stderr
    assert "Traceback" in result.stderr and "IssueFileError" in result.stderr


def test_a_value_after_double_dash_is_not_taken_for_debug(project: Path, capsys) -> None:
    code = main(["--config", str(project / "config.yaml"), "build", "--out", str(project / "o"), "--", "--debug"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "error: --debug: file not found"


def test_draft_does_not_suggest_force(project: Path, write_config, capsys) -> None:
    """The draft job leaves an editor's issue alone and says so, without naming an option
    it does not have."""
    config = write_config({"schedule": {"mode": "approve", "draft": {"day": "thu", "time": "15:00"}}})
    path = project / "issues/2024-10-25.yaml"
    before = path.read_bytes()
    assert main(["--config", str(config), "draft", "--as-of", "2024-10-24T12:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (
        f"2024-10-25: skipped: {path}: not written by gather (it has no gathered: record); "
        "not replaced; the editors' version is kept"
    )
    assert "--force" not in out
    assert path.read_bytes() == before


def test_approve_changes_only_the_status_lines(project: Path, capsys) -> None:
    """An editor's comments, quoting and layout survive approval (issue 13, item 7)."""
    path = project / "issues/2024-10-25.yaml"
    edited = (
        path.read_text(encoding="utf-8")
        .replace("status: draft\n", "status: draft   # Amira: check the Kazan figures first\n")
        .replace("  title: ", "  # the headline the desk agreed on\n  title: ", 1)
    )
    path.write_text(edited, encoding="utf-8")
    assert main(["approve", str(path)]) == 0
    after = path.read_text(encoding="utf-8")
    removed = [line for line in edited.splitlines() if line not in after.splitlines()]
    added = [line for line in after.splitlines() if line not in edited.splitlines()]
    assert removed == ["status: draft   # Amira: check the Kazan figures first"]
    assert re.fullmatch(r"status: approved +# Amira: check the Kazan figures first", added[0]), added
    assert len(added) == 2 and added[1].startswith("approved_at: ")
    assert after.splitlines()[after.splitlines().index(added[0]) + 1] == added[1]
    assert "approved" in capsys.readouterr().out


def test_the_command_line_starts_without_the_heavy_libraries() -> None:
    """`newsletter --help` (and every command's parsing) needs neither pydantic, the
    database, the web stack nor the browser: each is imported by the command that uses it."""
    heavy = ("pydantic", "sqlalchemy", "fastapi", "httpx", "apscheduler", "playwright", "lxml", "jinja2")
    probe = f"import sys, newsletter.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
