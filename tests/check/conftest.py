"""Fixtures for the render check: a project whose config turns the check on, the example
issue and an issue gathered from the fixture feeds, each built and checked once per
module (a check opens Chromium four times)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
import yaml

from newsletter.config import Settings, load_settings
from tests.conftest import ROOT, suite_config

CHROMIUM = Path("/usr/bin/chromium")
AS_OF = dt.datetime(2024, 10, 25, 21, 0, tzinfo=dt.UTC)

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (it is required when CI is set)",
)


def make_project(folder: Path, overrides: dict | None = None) -> Path:
    """A project in ``folder`` with the render check on (build and send): its config path."""
    for name in ("templates", "issues", "samples"):
        shutil.copytree(ROOT / name, folder / name)
    data = suite_config()
    data["render_check"] = {"on_build": "auto", "on_send": "auto"}
    for key, value in (overrides or {}).items():
        data[key] = {**data.get(key, {}), **value}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def checked_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, Path]]:
    """The example issue and the gathered fixture issue in one project: settings, and
    name -> issue file."""
    from newsletter.gather import gather_issue, write_draft

    folder = tmp_path_factory.mktemp("checked")
    settings = load_settings(make_project(folder), env={})
    gathered = write_draft(settings, gather_issue(settings, AS_OF).issue, folder / "issues" / "gathered.yaml", True)
    return settings, {"example": folder / "issues" / "2024-10-25.yaml", "gathered": gathered}
