"""Shared test fixtures: a project folder with a valid config in a temporary directory,
the fixture feeds and subscriber files, and the CLI runner."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from newsletter.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXAMPLE_ISSUE = ROOT / "issues" / "2024-10-25.yaml"


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the repository's config, templates, issues and sample feeds in tmp_path."""
    for name in ("templates", "issues", "samples"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    return tmp_path


@pytest.fixture
def write_config(project: Path) -> Callable[..., Path]:
    """Write project/config.yaml as the repository's config merged with ``overrides``."""

    def write(overrides: dict[str, Any] | None = None, name: str = "config.yaml") -> Path:
        data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
        data = _deep_merge(data, overrides or {})
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
