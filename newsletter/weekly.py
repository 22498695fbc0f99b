"""The weekly job: gather -> write the issue -> build -> send, as one idempotent function.

``run_week`` is what the scheduler's send job (and ``newsletter run``) calls: it sends this
week's edition once, resumes an unfinished send instead of starting a new issue, and
skips a week with nothing new. In ``approve`` mode ``draft_week`` gathers earlier and
sends the editors a test; ``run_week`` then sends only an issue an editor approved.
``resume_unfinished`` is the scheduler's resume job: it finishes sends left unsettled,
under the same rules, until ``schedule.resume_deadline``, then tells the editors once.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy import Engine

from newsletter import issuefile, send, shutdown
from newsletter.config import WEEKDAYS, Settings
from newsletter.errors import IssueFileError, NewsletterError, NoRoundupError
from newsletter.models import Issue, Recipient
from newsletter.render import RenderedEmail
from newsletter.senders.base import Batch, Delivery, Sender
from newsletter.store import batches, ledger

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


def _gather_into(
    settings: Settings, when: dt.datetime, edition: dt.date, path: Path, transport: httpx.BaseTransport | None
) -> tuple[Issue, list[str]]:
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
    from newsletter.store.db import database

    if engine is None:  # an unreachable database fails before any work
        with database(settings) as own:
            return run_week(settings, as_of, engine=own, sender=sender, transport=transport, progress=progress)
    when = as_of or dt.datetime.now(dt.UTC)
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
    summary = send.send_issue(
        settings, path, engine=engine, sender=sender, progress=progress, allow_draft=(mode == "auto")
    )
    if summary.already_complete:
        return WeekReport(edition, "already-sent", f"{path}: already sent; nothing to do", path, summary, warnings)
    if summary.complete:
        message = (
            f"{path}: sent to {summary.sent:,} subscribers ({summary.skipped:,} skipped, {summary.rejected:,} rejected)"
        )
        return WeekReport(edition, "sent", message, path, summary, warnings)
    message = (
        f"{path}: {summary.unsent:,} recipients unsent ({summary.ambiguous:,} ambiguous)"
        + (f": {summary.stopped}" if summary.stopped else "")
        + f"; {_resume_note(settings, path, ledger.get_send(engine, summary.issue))}"
    )
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
    when = as_of or dt.datetime.now(dt.UTC)
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
        slug="notice",
        subject=f"[{settings.publication.name}] {subject}",
        html=f"<p>{html.escape(message)}</p>",
        text=message + "\n",
        from_name=settings.sender.from_name,
        from_address=settings.sender.from_address,
        reply_to=settings.sender.reply_to,
    )
    try:
        with sender_for(settings, sender) as backend:
            backend.send(
                Batch(
                    issue="notice",
                    batch_id="notice",
                    email=email,
                    deliveries=[
                        Delivery(key=n, recipient=Recipient(email=a, unsubscribe_url=settings.publication.public_url))
                        for n, a in enumerate(editors)
                    ],
                )
            )
    except Exception as exc:  # a notice must never hide the report it is about
        log.error("could not notify the editors: %s", exc)


# --- resuming unfinished sends (the scheduler's resume job) --------------------------------

ResumeOutcome = Literal["sent", "incomplete", "busy", "refused", "gave-up"]


@dataclass(frozen=True)
class Unfinished:
    """A send with recipients still unsettled that the scheduler resumes until ``deadline``."""

    send: ledger.Send
    deadline: dt.datetime
    counts: ledger.Counts
    busy: bool  # a live process is sending it now

    @property
    def progress(self) -> str:
        """E.g. "40 sent, 10 unsent (8 pending, 2 ambiguous, 0 in flight)"."""
        return _counted(self.counts)


@dataclass(frozen=True)
class ResumeReport:
    """What the resume job did with one unfinished send."""

    issue: str
    outcome: ResumeOutcome
    message: str


def resume_deadline(settings: Settings, send_: ledger.Send) -> dt.datetime:
    """When the scheduler stops resuming ``send_``: ``schedule.resume_deadline`` hours after
    its audience was frozen."""
    return send_.created_at + dt.timedelta(hours=settings.schedule.resume_deadline)


def resumable(settings: Settings, engine: Engine, now: dt.datetime | None = None) -> list[Unfinished]:
    """Every unfinished send nobody gave up on, oldest first, with its deadline, its
    ledger counts and whether a live process is sending it (``schedule --status``)."""
    now = now or batches.utcnow()
    return [
        Unfinished(
            send_,
            resume_deadline(settings, send_),
            ledger.counts(engine, send_.id),
            any(b.live(now) for b in ledger.batches(engine, send_.id, "in_flight")),
        )
        for send_ in ledger.unfinished_sends(engine)
    ]


def resume_unfinished(
    settings: Settings, engine: Engine, *, sender: Sender | None = None, now: dt.datetime | None = None
) -> list[ResumeReport]:
    """Resume each unfinished send (see ``resumable``) once, as the weekly run would send
    it: pending recipients are sent (a draft only in auto mode; an issue changed since
    the freeze is refused), ambiguous ones only settled from the provider's events. A
    send a live process is working on is left to it. Past its deadline a send is given
    up and the editors are told, once even with several schedulers on one database."""
    now = now or batches.utcnow()
    reports = []
    for unfinished in resumable(settings, engine, now):
        if shutdown.requested():  # the process is stopping: the next start resumes the rest
            break
        reports.append(_resume(settings, engine, unfinished, sender, now))
    return reports


def _resume(
    settings: Settings, engine: Engine, unfinished: Unfinished, sender: Sender | None, now: dt.datetime
) -> ResumeReport:
    issue = unfinished.send.issue
    path = issuefile.path_for(settings.issues_dir, issue)
    if unfinished.busy:
        return ResumeReport(issue, "busy", f"{path}: another process is sending it")
    overdue = now >= unfinished.deadline
    note = _resume_note(settings, path, unfinished.send, now)
    complete, stopped = False, None
    try:
        if overdue or not unfinished.counts.pending:
            # nothing is sent: past the deadline it is too late, and ambiguous rows wait
            # for the provider's events
            complete = send.reconcile(settings, path, engine=engine, now=now).complete
        else:
            summary = send.send_issue(
                settings, path, engine=engine, sender=sender, allow_draft=settings.schedule.mode == "auto"
            )
            complete, stopped = summary.complete, summary.stopped
    except NewsletterError as exc:
        if not overdue:
            return ResumeReport(issue, "refused", f"{exc}; {note}")
    if not complete and overdue:
        return _give_up(settings, engine, unfinished, path, sender, now)
    counted = _counted(ledger.counts(engine, unfinished.send.id))
    if complete:
        return ResumeReport(issue, "sent", f"{path}: resumed and finished: {counted}")
    return ResumeReport(issue, "incomplete", f"{path}: {counted}" + (f": {stopped}" if stopped else "") + f"; {note}")


def _give_up(
    settings: Settings, engine: Engine, unfinished: Unfinished, path: Path, sender: Sender | None, now: dt.datetime
) -> ResumeReport:
    """Record the give-up; only the scheduler that recorded it tells the editors."""
    issue = unfinished.send.issue
    if not ledger.give_up(engine, unfinished.send.id, now):
        return ResumeReport(issue, "busy", f"{path}: another scheduler gave up on it")
    message = (
        f"{path}: the scheduler stopped resuming the send at {_local_time(settings, unfinished.deadline)}, "
        f"{settings.schedule.resume_deadline:g} h after its audience was frozen, with "
        f"{_counted(ledger.counts(engine, unfinished.send.id))}. See `newsletter send {path} --status`; "
        f"`newsletter send {path} --reconcile` settles what the provider's events prove, "
        f"`newsletter send {path}` sends the rest by hand."
    )
    _notify(settings, sender, f"Not finished: {unfinished.send.subject}", message)
    return ResumeReport(issue, "gave-up", message)


def _counted(counts: ledger.Counts) -> str:
    return (
        f"{counts.sent:,} sent, {counts.unsent:,} unsent ({counts.pending:,} pending, {counts.ambiguous:,} ambiguous, "
        f"{counts.in_flight:,} in flight)"
    )


def _resume_note(settings: Settings, path: Path, send_: ledger.Send | None, now: dt.datetime | None = None) -> str:
    """Who resumes an unfinished send, and until when."""
    if send_ is None:  # stopped before its audience was frozen: the next run starts it
        return "the next run starts it"
    deadline = resume_deadline(settings, send_)
    if send_.gave_up_at is not None or (now or batches.utcnow()) >= deadline:
        return (
            f"past its resume deadline ({_local_time(settings, deadline)}): `newsletter send {path}` resumes it by hand"
        )
    return (
        f"`newsletter schedule` resumes it every {settings.schedule.resume_every} min "
        f"until {_local_time(settings, deadline)}"
    )


def _local_time(settings: Settings, when: dt.datetime) -> str:
    return f"{when.astimezone(settings.schedule_zone):%a %Y-%m-%d %H:%M %Z}"
