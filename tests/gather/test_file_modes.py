"""Files the tool writes through a temporary file keep the mode the old file had, or
follow the umask for a new one (mkstemp alone would give 0600): issue drafts, build
files, subscriber exports."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from newsletter import issuefile
from newsletter.cli import main
from newsletter.config import Settings
from newsletter.gather import write_draft
from newsletter.store import db, export
from newsletter.yamlfile import atomic_write


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_a_new_file_follows_the_umask(tmp_path: Path, umask_027: None) -> None:
    path = tmp_path / "new.yaml"
    atomic_write(path, "x: 1\n")
    assert mode(path) == 0o640


@pytest.mark.parametrize("old_mode", [0o644, 0o664, 0o600, 0o444])
def test_a_replaced_file_keeps_its_mode(tmp_path: Path, old_mode: int) -> None:
    path = tmp_path / "issue.yaml"
    path.write_text("old\n")
    path.chmod(old_mode)
    atomic_write(path, "new\n")
    assert path.read_text() == "new\n" and mode(path) == old_mode


def test_a_gathered_draft_keeps_the_mode_of_the_one_it_replaces(settings: Settings, tmp_path: Path) -> None:
    example = issuefile.load(settings.issues_dir / "2024-10-25.yaml")
    path = tmp_path / "draft.yaml"
    path.write_bytes(b"")
    path.chmod(0o644)
    write_draft(settings, example, path, force=True)
    assert mode(path) == 0o644 and issuefile.load(path).subject == example.subject


def test_a_subscriber_export_follows_the_umask(tmp_path: Path, umask_027: None) -> None:
    engine = db.create_store_engine(f"sqlite:///{tmp_path / 'subscribers.db'}")
    try:
        db.upgrade(engine)
        path = tmp_path / "export.csv"
        export.export_file(engine, path)
    finally:
        engine.dispose()
    assert mode(path) == 0o640


def test_an_import_rejects_file_follows_the_umask(
    write_config: Callable[..., Path],
    fixtures_dir: Path,
    tmp_path: Path,
    umask_027: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    config = write_config({"database": {"url": f"sqlite:///{tmp_path / 'subscribers.db'}", "auto_upgrade": True}})
    rejects = tmp_path / "rejects.csv"
    sample = fixtures_dir / "subscribers" / "import-sample.csv"
    main(["--config", str(config), "subscribers", "import", str(sample), "--rejects", str(rejects)])
    capsys.readouterr()
    assert rejects.read_text(encoding="utf-8").strip() and mode(rejects) == 0o640
