"""The weekly job: gather -> write the issue -> build -> send, as one idempotent function.

``run_week`` is what the scheduler's send job (and ``newsletter run``) calls: it sends this
week's edition once, resumes an unfinished send instead of starting a new issue, and
skips a week with nothing new. In ``approve`` mode ``draft_week`` gathers earlier and
sends the editors a test; ``run_week`` then sends only an issue an editor approved.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy import Engine

from newsletter import issuefile, send
from newsletter.config import WEEKDAYS, Settings
from newsletter.errors import IssueFileError, NoRoundupError
from newsletter.models import Issue, Recipient
from newsletter.render import RenderedEmail
from newsletter.senders.base import Batch, Delivery, Sender

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

Outcome = Literal["sent", "incomplete", "skipped", "already-sent", "drafted"]


@dataclass
class WeekReport:
    """What one run of the weekly job did, for logs, the CLI and the editors."""

    edition: dt.date
    outcome: Outcome
    message: str
    issue_path: Path | None = None
    summary: send.SendSummary | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome != "incomplete"


def _local(settings: Settings, when: dt.datetime) -> dt.date:
    return when.astimezone(settings.schedule_zone).date()


def edition_for_send(settings: Settings, when: dt.datetime) -> dt.date:
    """This week's edition: the latest send day on or before ``when`` (local date)."""
    day = _local(settings, when)
    target = WEEKDAYS.index(settings.schedule.send.day)
    return day - dt.timedelta(days=(day.weekday() - target) % 7)


def edition_for_draft(settings: Settings, when: dt.datetime) -> dt.date:
    """The edition a draft job prepares: the next send day on or after ``when``."""
    day = _local(settings, when)
    target = WEEKDAYS.index(settings.schedule.send.day)
    return day + dt.timedelta(days=(target - day.weekday()) % 7)


def _gather_into(settings: Settings, when: dt.datetime, edition: dt.date, path: Path,
                 transport: httpx.BaseTransport | None) -> tuple[Issue, list[str]]:
    """Gather at ``when`` and write the draft as ``edition``'s issue file."""
    from newsletter import gather

    result = gather.gather_issue(settings, when, transport=transport)
    issue = result.issue.model_copy(update={"slug": edition.isoformat(), "date": edition})
    gather.write_draft(settings, issue, path)
    return issuefile.load(path), list(result.warnings)


def run_week(
    settings: Settings,
    as_of: dt.datetime | None = None,
    *,
    engine: Engine | None = None,
    sender: Sender | None = None,
    transport: httpx.BaseTransport | None = None,
    progress: send.Progress | None = None,
) -> WeekReport:
    """Send this week's edition exactly once (see the module docstring)."""
    from newsletter.store.db import open_database

    if engine is None:
        own = open_database(settings)  # an unreachable database fails before any work
        try:
            return run_week(settings, as_of, engine=own, sender=sender, transport=transport, progress=progress)
        finally:
            own.dispose()
    when = as_of or dt.datetime.now(dt.timezone.utc)
    edition = edition_for_send(settings, when)
    path = issuefile.path_for(settings.issues_dir, edition.isoformat())
    mode = settings.schedule.mode
    warnings: list[str] = []
    if path.exists():
        issue = issuefile.load(path)
        if issue.status == "sent":
            return WeekReport(edition, "already-sent", f"{path}: already sent; nothing to do", path)
        if mode == "approve" and issue.status != "approved":
            message = f"{path}: not approved by an editor; skipping the week's send"
            _notify(settings, sender, f"Not sent: {issue.subject}", message)
            return WeekReport(edition, "skipped", message, path)
    elif mode == "approve":
        message = f"{path}: no draft was gathered for {edition}; nothing to send this week"
        _notify(settings, sender, f"Not sent: the issue of {edition}", message)
        return WeekReport(edition, "skipped", message)
    else:
        try:
            _issue, warnings = _gather_into(settings, when, edition, path, transport)
        except NoRoundupError as exc:
            return WeekReport(edition, "skipped", str(exc))
    summary = send.send_issue(settings, path, engine=engine, sender=sender, progress=progress,
                              allow_draft=(mode == "auto"))
    if summary.already_complete:
        return WeekReport(edition, "already-sent", f"{path}: already sent; nothing to do", path, summary, warnings)
    if summary.complete:
        message = f"{path}: sent to {summary.sent:,} subscribers ({summary.skipped:,} skipped, {summary.rejected:,} rejected)"
        return WeekReport(edition, "sent", message, path, summary, warnings)
    message = (f"{path}: {summary.unsent:,} recipients unsent ({summary.ambiguous:,} ambiguous)"
               + (f": {summary.stopped}" if summary.stopped else "") + "; the next run resumes this send")
    return WeekReport(edition, "incomplete", message, path, summary, warnings)


def draft_week(
    settings: Settings,
    as_of: dt.datetime | None = None,
    *,
    sender: Sender | None = None,
    transport: httpx.BaseTransport | None = None,
) -> WeekReport:
    """Approve mode, earlier in the week: gather the coming edition and send the editors a
    test. An issue an editor already approved, sent or edited is left as it is."""
    when = as_of or dt.datetime.now(dt.timezone.utc)
    edition = edition_for_draft(settings, when)
    path = issuefile.path_for(settings.issues_dir, edition.isoformat())
    try:
        _issue, warnings = _gather_into(settings, when, edition, path, transport)
    except NoRoundupError as exc:
        _notify(settings, sender, f"No round-up for {edition}", str(exc))
        return WeekReport(edition, "skipped", str(exc))
    except IssueFileError as exc:
        return WeekReport(edition, "skipped", f"{exc}; the editors' version is kept", path)
    sent_to: list[str] = []
    if settings.delivery.test_recipients:
        sent_to = send.send_test(settings, path, sender=sender)
    message = f"{path}: draft gathered" + (f"; test sent to {', '.join(sent_to)}" if sent_to else "")
    return WeekReport(edition, "drafted", message, path, warnings=warnings)


def _notify(settings: Settings, sender: Sender | None, subject: str, message: str) -> None:
    """Tell the editors (``editors``, else ``delivery.test_recipients``) in a short email."""
    log.warning(message)
    editors = settings.editors or settings.delivery.test_recipients
    if not settings.schedule.notify_editors or not editors:
        return
    from newsletter.senders import sender_for

    email = RenderedEmail(
        slug="notice", subject=f"[{settings.publication.name}] {subject}",
        html=f"<p>{html.escape(message)}</p>", text=message + "\n",
        from_name=settings.sender.from_name, from_address=settings.sender.from_address,
        reply_to=settings.sender.reply_to,
    )
    try:
        with sender_for(settings, sender) as backend:
            backend.send(Batch(issue="notice", batch_id="notice", email=email, deliveries=[
                Delivery(key=n, recipient=Recipient(email=a, unsubscribe_url=settings.publication.public_url))
                for n, a in enumerate(editors)]))
    except Exception as exc:  # a notice must never hide the report it is about
        log.error("could not notify the editors: %s", exc)




