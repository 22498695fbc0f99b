"""Issue files (``issues/<slug>.yaml``): read and validate them, write gathered drafts
atomically, change an editor's file's status lines without touching the rest, and tell
whether an editor changed a gathered draft.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from newsletter.errors import IssueFileError
from newsletter.models import Gathered, Issue, IssueStatus
from newsletter.yamlfile import atomic_write, dump, read_mapping, set_top_level_keys, validate


def load(path: Path) -> Issue:
    """Read ``path`` into an ``Issue``; errors name the file and the field."""
    return validate(Issue, read_mapping(path, IssueFileError), path, IssueFileError)


def save(issue: Issue, path: Path) -> None:
    """Write ``issue`` to ``path`` atomically, in the order an editor reads it."""
    data = issue.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
    atomic_write(path, dump(data))


def set_status(path: Path, status: IssueStatus, **stamps: dt.datetime) -> Issue:
    """Set ``status`` (and ``approved_at``/``sent_at``) in the editor's file ``path``,
    changing those lines only: comments, quoting and order stay as the editor left them."""
    set_top_level_keys(
        path, {"status": status, **stamps}, after=("status", "approved_at", "sent_at"), error=IssueFileError
    )
    return load(path)


def path_for(issues_dir: Path, slug: str) -> Path:
    return issues_dir / f"{slug}.yaml"


def checksum(issue: Issue) -> str:
    """A digest of the issue's content (not its status), stable across saves."""
    canonical = json.dumps(issue.content_fields(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def stamp_gathered(issue: Issue, at: dt.datetime) -> Issue:
    """Record that ``issue`` is exactly what gather produced at ``at``."""
    return issue.model_copy(update={"gathered": Gathered(at=at, checksum=checksum(issue))})


def edited_since_gathered(issue: Issue) -> bool:
    """True when an editor changed the content after gather wrote it (or wrote it by hand)."""
    return issue.gathered is None or issue.gathered.checksum != checksum(issue)


def sent_issues(issues_dir: Path) -> list[tuple[Path, Issue]]:
    """The sent issues (the archive), newest first; unreadable files are left out."""
    found = [(p, i) for p, i in list_issues(issues_dir) if isinstance(i, Issue) and i.status == "sent"]
    return sorted(found, key=lambda pi: (pi[1].date, pi[1].slug), reverse=True)


def list_issues(issues_dir: Path) -> list[tuple[Path, Issue | IssueFileError]]:
    """Every issue file in ``issues_dir``, newest first, with its error if it is invalid."""
    found: list[tuple[Path, Issue | IssueFileError]] = []
    for path in sorted(issues_dir.glob("*.yaml"), reverse=True):
        try:
            found.append((path, load(path)))
        except IssueFileError as exc:
            found.append((path, exc))
    return found
