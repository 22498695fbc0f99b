"""Issues as the web app shows them: finding an issue file by slug, building it once per
change (a small cache keyed by the issue file's and the templates' modification times),
the archive's web version with the per-recipient placeholders neutralised, and the
fingerprint the preview polls to reload itself.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from newsletter import issuefile, links, render
from newsletter.config import Settings
from newsletter.models import SLUG, Issue, Recipient
from newsletter.web.problems import NotFound

CACHE_SIZE = 16


def issue_path(settings: Settings, slug: str) -> Path:
    """The file of the issue ``slug`` (``issues/<slug>.yaml``, else the file whose slug it
    is), without reading it when the name matches; NotFound for anything else."""
    if not SLUG.fullmatch(slug):
        raise NotFound("There is no issue at this address.")
    path = issuefile.path_for(settings.issues_dir, slug)
    if path.is_file():
        return path
    for other, loaded in issuefile.list_issues(settings.issues_dir):
        if isinstance(loaded, Issue) and loaded.slug == slug:
            return other
    raise NotFound("There is no issue at this address.")


def find_issue(settings: Settings, slug: str) -> tuple[Path, Issue]:
    """The issue ``slug``, read; IssueFileError when its file is invalid."""
    path = issue_path(settings, slug)
    return path, issuefile.load(path)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


def templates_fingerprint(settings: Settings) -> tuple[int, int, int]:
    """Changes when any template file is added, removed or modified."""
    newest = count = total = 0
    root = settings.templates.dir
    if root.is_dir():
        for path in root.rglob("*"):
            if path.is_file():
                mtime, size = _stamp(path)
                newest, count, total = max(newest, mtime), count + 1, total + size
    return (newest, count, total)


def fingerprint(settings: Settings, path: Path) -> str:
    """What the preview compares to know the issue or a template changed."""
    mtime, size = _stamp(path)
    newest, count, total = templates_fingerprint(settings)
    return f"{mtime:x}-{size:x}-{newest:x}-{count:x}-{total:x}"


@dataclass
class BuildCache:
    """The last few builds, so the preview's frames and the archive do not re-render an
    unchanged issue (a build costs a few hundred milliseconds)."""

    settings: Settings

    def __post_init__(self) -> None:
        self._built: OrderedDict[tuple[str, str], render.Built] = OrderedDict()
        self._lock = threading.Lock()

    def build(self, path: Path, issue: Issue) -> render.Built:
        key = (str(path), fingerprint(self.settings, path) + issuefile.checksum(issue) + issue.status)
        with self._lock:
            if key in self._built:
                self._built.move_to_end(key)
                return self._built[key]
        built = render.build_issue(issue, self.settings)
        with self._lock:
            self._built[key] = built
            while len(self._built) > CACHE_SIZE:
                self._built.popitem(last=False)
        return built


def sample_parts(settings: Settings, built: render.Built) -> tuple[str, str]:
    """The preview's HTML and text: personalized for the sample reader, as `build` does."""
    return render.personalize_parts(built.email, render.sample_recipient(settings))


def web_version(settings: Settings, built: render.Built) -> str:
    """The archive's HTML: nobody's unsubscribe link (it points at the sign-up page
    instead), no address, no name."""
    subscribe = links.subscribe(settings.publication)
    nobody = Recipient(email="", name="", unsubscribe_url=subscribe, preferences_url=subscribe)
    html, _text = render.personalize_parts(built.email, nobody)
    return html


def sent_issues(settings: Settings) -> list[Issue]:
    """The archive: sent issues, newest first; unreadable files are left out."""
    return [issue for _path, issue in issuefile.sent_issues(settings.issues_dir)]
