"""`newsletter build` as a process: it imports only what a build uses (no web stack,
database, HTTP client, scheduler; no browser when the render check's report for this
HTML is stored), and a build of an email compiled before takes its HTML from the build
cache, byte for byte what premailer made, without importing premailer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from newsletter import buildcache, rendercheck
from tests.check.conftest import CHROMIUM, needs_chromium

# What a build must leave unimported (the issue names the first four).
NOT_FOR_BUILD = ("fastapi", "sqlalchemy", "httpx", "apscheduler", "uvicorn", "starlette", "alembic")
BROWSER = ("playwright", "axe_playwright_python")
PROBE = """
import json, sys
from newsletter.cli import main
code = main(sys.argv[1:])
names = ("fastapi", "sqlalchemy", "httpx", "apscheduler", "uvicorn", "starlette", "alembic",
         "playwright", "axe_playwright_python", "premailer", "cssutils", "mjml")
print(json.dumps({"code": code, "imported": sorted(n for n in names if n in sys.modules)}))
"""


def _build(config: Path, out: Path) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            "--config",
            str(config),
            "build",
            str(config.parent / "issues" / "2024-10-25.yaml"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, done.stdout + done.stderr
    return result


def _outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("email.html", "email.txt")}


def _cache_entries(project: Path) -> list[Path]:
    return sorted((project / "build" / buildcache.CACHE_FOLDER / "html").glob("*.html"))


def test_a_build_imports_neither_the_web_stack_nor_the_database(project: Path, tmp_path: Path) -> None:
    first = _build(project / "config.yaml", tmp_path / "out")
    assert not set(first["imported"]) & set(NOT_FOR_BUILD + BROWSER), first
    assert "premailer" in first["imported"]  # the first build of this email inlines it


def test_a_rebuild_takes_the_html_from_the_cache_without_premailer(project: Path, tmp_path: Path) -> None:
    first = _build(project / "config.yaml", tmp_path / "one")
    second = _build(project / "config.yaml", tmp_path / "two")
    assert "premailer" in first["imported"] and "mjml" in first["imported"]
    assert not {"premailer", "cssutils", "mjml"} & set(second["imported"]), second
    assert _outputs(tmp_path / "one") == _outputs(tmp_path / "two")
    assert len(_cache_entries(project)) == 1


def test_an_edited_template_is_compiled_again(project: Path, tmp_path: Path) -> None:
    _build(project / "config.yaml", tmp_path / "one")
    css = project / "templates" / "inline.css.j2"
    css.write_text(css.read_text(encoding="utf-8") + ".footer { font-size: 13px; }\n", encoding="utf-8")
    again = _build(project / "config.yaml", tmp_path / "two")
    assert "premailer" in again["imported"]
    assert _outputs(tmp_path / "one")["email.html"] != _outputs(tmp_path / "two")["email.html"]
    assert "font-size:13px" in (tmp_path / "two" / "email.html").read_text(encoding="utf-8")
    assert len(_cache_entries(project)) == 2


@pytest.mark.parametrize("damage", ["torn", "edited", "empty"])
def test_a_damaged_cache_entry_is_a_miss_not_an_email(project: Path, tmp_path: Path, damage: str) -> None:
    _build(project / "config.yaml", tmp_path / "one")
    (entry,) = _cache_entries(project)
    raw = entry.read_bytes()
    entry.write_bytes(
        {"torn": raw[: len(raw) // 2], "edited": raw.replace(b"Statecraft", b"Evilcraft"), "empty": b""}[damage]
    )
    again = _build(project / "config.yaml", tmp_path / "two")
    assert "premailer" in again["imported"]
    assert _outputs(tmp_path / "one") == _outputs(tmp_path / "two")
    assert entry.read_bytes() == raw  # written again, whole


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_cache_that_cannot_be_written_only_costs_time(project: Path, tmp_path: Path) -> None:
    build = project / "build"
    build.mkdir()
    (build / buildcache.CACHE_FOLDER).mkdir(mode=0o500)
    try:
        _build(project / "config.yaml", tmp_path / "one")
        _build(project / "config.yaml", tmp_path / "two")
    finally:
        (build / buildcache.CACHE_FOLDER).chmod(0o700)
    assert _outputs(tmp_path / "one") == _outputs(tmp_path / "two")


def test_a_cache_folder_that_is_a_file_only_costs_time(project: Path, tmp_path: Path) -> None:
    build = project / "build"
    build.mkdir()
    (build / buildcache.CACHE_FOLDER).write_text("not a folder", encoding="utf-8")
    first = _build(project / "config.yaml", tmp_path / "one")
    second = _build(project / "config.yaml", tmp_path / "two")
    assert "premailer" in first["imported"] and "premailer" in second["imported"]
    assert _outputs(tmp_path / "one") == _outputs(tmp_path / "two")


@needs_chromium
@pytest.mark.browser
def test_with_a_stored_render_check_the_build_opens_no_browser(write_config: Any, tmp_path: Path) -> None:
    """The editor's steady state with ``render_check.on_build: auto``: the first build runs
    the check in Chromium and records it; the next one reuses the report recorded for
    exactly this HTML, and does not even import Playwright."""
    config = write_config({"render_check": {"on_build": "auto", "chromium": str(CHROMIUM)}})
    out = tmp_path / "out"
    first = _build(config, out)
    assert "playwright" in first["imported"]
    html = (out / "email.html").read_text(encoding="utf-8")
    report = rendercheck.recorded(out, html)
    assert report is not None and report.renders and report.html_sha256 == rendercheck.html_sha256(html)
    again = _build(config, out)
    assert not set(again["imported"]) & set(NOT_FOR_BUILD + BROWSER), again
    assert (out / "email.html").read_text(encoding="utf-8") == html


def test_help_imports_neither_rich_nor_the_configuration() -> None:
    """`newsletter --help` is click's plain help: no rich, no pydantic, no templates."""
    probe = (
        "import sys\nfrom newsletter.cli import main\ncode = main(['--help'])\n"
        "print(sorted(m for m in ('rich', 'pydantic', 'markdown_it', 'jinja2', 'yaml') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage: newsletter" in done.stdout and "build" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_old_entries_are_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buildcache, "HTML_ENTRIES", 3)
    cache = buildcache.HtmlCache(tmp_path)
    keys = [buildcache.html_key(f"<mjml>{n}</mjml>", "") for n in range(5)]
    for n, key in enumerate(keys):
        cache.put(key, f"<html>{n}</html>")
        os.utime(cache.directory / f"{key}.html", ns=(n * 10**9, n * 10**9))
    cache.put(keys[4], "<html>4</html>")  # prunes down to three, the oldest first
    assert [cache.get(k) for k in keys] == [None, None, "<html>2</html>", "<html>3</html>", "<html>4</html>"]
