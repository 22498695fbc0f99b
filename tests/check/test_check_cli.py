"""`newsletter check` and the report in `newsletter build`: the report, a failing check's
exit code and one-line errors, bad input, and machines without Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.cli import main
from tests.check.conftest import make_project, needs_chromium

WIDE = '<div style="width:700px">A table that does not fit a phone.</div>'


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def break_layout(project: Path) -> None:
    """Give the intro a block wider than a phone."""
    intro = project / "templates" / "partials" / "intro.mjml.j2"
    intro.write_text(
        intro.read_text(encoding="utf-8").replace(
            "{{ issue.intro | markdown }}", "{{ issue.intro | markdown }}" + WIDE
        ),
        encoding="utf-8",
    )


@pytest.mark.browser
@needs_chromium
def test_check_prints_the_report_and_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_project(tmp_path)
    code, out, err = _run(capsys, "--config", str(config), "check", str(tmp_path / "issues/2024-10-25.yaml"))
    assert code == 0, err
    assert "render check: 4 renders in" in out
    for name in ("375 px light", "375 px dark", "600 px light", "600 px dark"):
        assert f"  {name}: overflow 0 px" in out
    assert "Outlook (Windows): " in out and "border-radius (square corners" in out
    assert sorted(p.name for p in (tmp_path / "build").glob("check-*.png")) == [
        "check-375-dark.png",
        "check-375-light.png",
        "check-600-dark.png",
        "check-600-light.png",
    ]
    assert "error" not in err


@pytest.mark.browser
@needs_chromium
def test_a_failing_check_exits_non_zero_with_one_line_per_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_project(tmp_path)
    break_layout(tmp_path)
    issue = str(tmp_path / "issues/2024-10-25.yaml")
    code, out, err = _run(capsys, "--config", str(config), "check", issue)
    assert code == 1
    assert "error: render check (375 px, light): " in err and "px of horizontal overflow" in err
    assert "Traceback" not in err
    # build reports the same (the check is recorded for this HTML: no second browser run)
    code, out, err = _run(capsys, "--config", str(config), "build", issue)
    assert code == 1 and "wrote " in out and "px of horizontal overflow" in err


def test_check_of_a_missing_issue_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_project(tmp_path)
    code, _out, err = _run(capsys, "--config", str(config), "check", str(tmp_path / "issues/nope.yaml"))
    assert code != 0
    assert "nope.yaml" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "build").exists()


def test_without_chromium_check_and_build_say_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_project(tmp_path, {"render_check": {"chromium": str(tmp_path / "no-chromium")}})
    issue = str(tmp_path / "issues/2024-10-25.yaml")
    code, out, err = _run(capsys, "--config", str(config), "check", issue)
    assert code == 0
    assert (
        err.strip() == f"warning: render check skipped: {tmp_path / 'no-chromium'} is not installed "
        "(apt-get install chromium)"
    )
    code, out, err = _run(capsys, "--config", str(config), "build", issue)
    assert code == 0 and "wrote " in out and "render check skipped" in err
    assert not list((tmp_path / "build").glob("check-*"))


def test_build_with_the_check_off_prints_no_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_project(tmp_path, {"render_check": {"on_build": "off"}})
    code, out, err = _run(capsys, "--config", str(config), "build", str(tmp_path / "issues/2024-10-25.yaml"))
    assert code == 0 and "render check" not in out + err


def test_an_unknown_mode_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_project(tmp_path, {"render_check": {"on_send": "sometimes"}})
    code, _out, err = _run(capsys, "--config", str(config), "check", str(tmp_path / "issues/2024-10-25.yaml"))
    assert code != 0 and "render_check.on_send" in err and "Traceback" not in err


@pytest.mark.browser
@needs_chromium
def test_an_unchanged_email_reuses_its_report_and_again_checks_anew(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_project(tmp_path)
    issue = str(tmp_path / "issues/2024-10-25.yaml")
    assert _run(capsys, "--config", str(config), "check", issue)[0] == 0
    shot = tmp_path / "build" / "check-375-dark.png"
    first = shot.stat().st_mtime_ns
    code, out, _ = _run(capsys, "--config", str(config), "check", issue)
    assert code == 0 and "render check: 4 renders in" in out and shot.stat().st_mtime_ns == first
    code, out, _ = _run(capsys, "--config", str(config), "check", issue, "--again")
    assert code == 0 and "render check: 4 renders in" in out and shot.stat().st_mtime_ns != first
    assert not list((tmp_path / "build").glob(".*.tmp"))  # screenshots are written whole
