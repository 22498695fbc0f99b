"""Issue files: the shipped example, validation errors naming file and field, atomic saves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from newsletter import issuefile
from newsletter.errors import IssueFileError

from .conftest import EXAMPLE_ISSUE


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def example_data() -> dict:
    return yaml.safe_load(EXAMPLE_ISSUE.read_text(encoding="utf-8"))


def test_example_issue_is_a_full_edition() -> None:
    issue = issuefile.load(EXAMPLE_ISSUE)
    assert issue.slug == "2024-10-25"
    assert issue.date == dt.date(2024, 10, 25)
    assert issue.roundup is not None and issue.roundup.title.startswith("Diplomacy Watch:")
    assert len(issue.roundup.body_html) > 3000  # a full-length lead piece
    assert "<h2>" in issue.roundup.body_html
    assert len(issue.teasers) >= 5
    assert issue.appeal is not None
    assert issue.status == "draft"


def test_missing_required_field_names_file_and_field(tmp_path: Path, example_data: dict) -> None:
    del example_data["teasers"][2]["url"]
    path = _write(tmp_path / "x.yaml", example_data)
    with pytest.raises(IssueFileError) as err:
        issuefile.load(path)
    assert str(err.value) == f"{path}: teasers[2].url: required key is missing"


def test_broken_image_url_is_rejected(tmp_path: Path, example_data: dict) -> None:
    example_data["teasers"][0]["image"]["src"] = "assets/photo.jpg"
    path = _write(tmp_path / "x.yaml", example_data)
    with pytest.raises(IssueFileError, match=r"teasers\[0\]\.image\.src: must be an absolute http\(s\) URL"):
        issuefile.load(path)


def test_javascript_url_is_rejected(tmp_path: Path, example_data: dict) -> None:
    example_data["roundup"]["url"] = "javascript:alert(1)"
    path = _write(tmp_path / "x.yaml", example_data)
    with pytest.raises(IssueFileError, match=r"roundup\.url"):
        issuefile.load(path)


def test_unknown_key(tmp_path: Path, example_data: dict) -> None:
    example_data["appeal"]["buton_label"] = "typo"
    path = _write(tmp_path / "x.yaml", example_data)
    with pytest.raises(IssueFileError, match=r"appeal\.buton_label: unknown key"):
        issuefile.load(path)


def test_subject_with_newline_is_rejected(tmp_path: Path, example_data: dict) -> None:
    example_data["subject"] = "Hello\nBcc: everyone@example.net"
    path = _write(tmp_path / "x.yaml", example_data)
    with pytest.raises(IssueFileError, match="subject: must be a single line"):
        issuefile.load(path)


def test_bad_slug_and_status(tmp_path: Path, example_data: dict) -> None:
    example_data["slug"] = "../../etc/passwd"
    with pytest.raises(IssueFileError, match="slug: must be lowercase"):
        issuefile.load(_write(tmp_path / "a.yaml", example_data))
    example_data["slug"] = "2024-10-25"
    example_data["status"] = "published"
    with pytest.raises(IssueFileError, match="status: Input should be 'draft', 'approved' or 'sent'"):
        issuefile.load(_write(tmp_path / "b.yaml", example_data))


def test_empty_issue_is_rejected(tmp_path: Path, example_data: dict) -> None:
    example_data["roundup"] = None
    example_data["teasers"] = []
    with pytest.raises(IssueFileError, match="needs a roundup or at least one teaser"):
        issuefile.load(_write(tmp_path / "x.yaml", example_data))


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(IssueFileError, match="file not found"):
        issuefile.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("slug: x\n  date: : :\n", encoding="utf-8")
    with pytest.raises(IssueFileError, match=r"bad\.yaml: line \d+"):
        issuefile.load(bad)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("subject: caf\xe9\n".encode("latin-1"))
    with pytest.raises(IssueFileError, match="not UTF-8"):
        issuefile.load(latin)


def test_save_round_trips_and_is_atomic(tmp_path: Path) -> None:
    issue = issuefile.load(EXAMPLE_ISSUE)
    path = tmp_path / "issues" / "copy.yaml"
    issuefile.save(issue, path)
    assert issuefile.load(path) == issue
    assert [p.name for p in path.parent.iterdir()] == ["copy.yaml"]  # no temp file left


def test_edited_since_gathered(tmp_path: Path) -> None:
    issue = issuefile.load(EXAMPLE_ISSUE)
    assert issuefile.edited_since_gathered(issue)  # hand-written: never gathered
    stamped = issuefile.stamp_gathered(issue, dt.datetime(2024, 10, 25, 21, tzinfo=dt.UTC))
    path = tmp_path / "x.yaml"
    issuefile.save(stamped, path)
    reloaded = issuefile.load(path)
    assert not issuefile.edited_since_gathered(reloaded)
    approved = reloaded.model_copy(update={"status": "approved"})
    assert not issuefile.edited_since_gathered(approved)  # status is not content
    edited = reloaded.model_copy(update={"subject": "A better subject"})
    assert issuefile.edited_since_gathered(edited)


def test_a_slug_with_a_trailing_newline_is_refused(tmp_path: Path, example_data: dict) -> None:
    example_data["slug"] = "2024-10-25\n"  # "$" with .match let this through
    with pytest.raises(IssueFileError, match=r"bad\.yaml: slug: must be lowercase letters, digits and hyphens"):
        issuefile.load(_write(tmp_path / "bad.yaml", example_data))


def test_a_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    text = EXAMPLE_ISSUE.read_text(encoding="utf-8")
    first = text.splitlines().index("status: draft") + 1
    path.write_text(text + "status: approved\n", encoding="utf-8")
    with pytest.raises(IssueFileError) as err:
        issuefile.load(path)
    assert str(err.value) == (
        f"{path}: line {len(text.splitlines()) + 1}, column 1: duplicate key 'status' (first on line {first})"
    )


def test_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{k}: &{k} [{', '.join(['*' + p] * 10)}]\n" for p, k in zip("abcdefgh", "bcdefghi", strict=False)),
        encoding="utf-8",
    )
    with pytest.raises(IssueFileError, match=r"bomb\.yaml: line 3, column \d+: more than 16 aliases"):
        issuefile.load(path)


@pytest.mark.parametrize("style", ["gathered", "hand-written"])
def test_set_status_keeps_every_other_line(tmp_path: Path, style: str) -> None:
    """Both layouts an issue file has: gather's (indentless lists, | blocks) and an
    editor's (indented lists, comments, quotes, folded >- blocks)."""
    path = tmp_path / "issue.yaml"
    if style == "gathered":
        issuefile.save(
            issuefile.stamp_gathered(issuefile.load(EXAMPLE_ISSUE), dt.datetime(2024, 10, 25, tzinfo=dt.UTC)), path
        )
    else:
        path.write_bytes(EXAMPLE_ISSUE.read_bytes())
    before = path.read_text(encoding="utf-8").splitlines()
    sent_at = dt.datetime(2024, 10, 25, 13, 0, 5, tzinfo=dt.UTC)
    issue = issuefile.set_status(path, "sent", sent_at=sent_at)
    after = path.read_text(encoding="utf-8").splitlines()
    at = before.index("status: draft")
    assert after[:at] == before[:at] and after[at + 2 :] == before[at + 1 :]
    assert after[at : at + 2] == ["status: sent", "sent_at: 2024-10-25 13:00:05+00:00"]
    assert issue.status == "sent" and issue.sent_at == sent_at
    assert issuefile.checksum(issue) == issuefile.checksum(issuefile.load(EXAMPLE_ISSUE))
    assert [p.name for p in tmp_path.iterdir()] == ["issue.yaml"]  # no temporary file left


def test_approve_then_send_keeps_the_stamps_in_order(tmp_path: Path) -> None:
    path = tmp_path / "issue.yaml"
    path.write_bytes(EXAMPLE_ISSUE.read_bytes())
    issuefile.set_status(path, "approved", approved_at=dt.datetime(2024, 10, 25, 9, tzinfo=dt.UTC))
    issuefile.set_status(path, "sent", sent_at=dt.datetime(2024, 10, 25, 13, tzinfo=dt.UTC))
    lines = path.read_text(encoding="utf-8").splitlines()
    at = lines.index("status: sent")
    assert lines[at + 1 : at + 3] == ["approved_at: 2024-10-25 09:00:00+00:00", "sent_at: 2024-10-25 13:00:00+00:00"]
    assert len(lines) == len(EXAMPLE_ISSUE.read_text(encoding="utf-8").splitlines()) + 2
