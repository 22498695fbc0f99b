"""APScheduler wiring for the weekly job: cron triggers at a local wall-clock time (DST
handled by the trigger's time zone), the project's database as the job store so a
restart keeps state, coalescing, one instance at a time, and a misfire grace window
after which a missed run is dropped rather than sending a stale issue late. A permanent
interval job resumes unfinished sends; the ledger is its state, so it needs no other. A
daily job forgets sign-ups nobody confirmed in time; with a bounce mailbox configured, an
hourly job reads it.

The jobs are module-level functions taking the config path, so the job store holds
only a reference and a string; settings are read fresh at every run.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from newsletter import shutdown
from newsletter.config import Settings, WeeklyTime, load_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

T = TypeVar("T")

log = logging.getLogger(__name__)

SEND_JOB = "weekly-send"
DRAFT_JOB = "weekly-draft"
RESUME_JOB = "weekly-resume"
EXPIRE_JOB = "daily-expire"
BOUNCES_JOB = "hourly-bounces"
EXPIRE_AT = (3, 30)  # local time of the daily job that forgets unconfirmed sign-ups
# The resume job fires at fixed multiples of its interval from this instant, so its run
# times do not depend on when it was installed, and --status can tell them.
RESUME_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
# How the resume job logs each outcome; the rest (refused, gave-up) are errors.
RESUME_LEVELS = {"sent": logging.INFO, "busy": logging.INFO, "incomplete": logging.WARNING}
JOBS_TABLE = "apscheduler_jobs"


class WallClockTrigger(CronTrigger):  # type: ignore[misc]  # APScheduler 3 ships no types
    """A cron trigger that fires once per local wall-clock time: when clocks fall back
    and 01:30 happens twice, APScheduler's CronTrigger would fire at both."""

    def get_next_fire_time(self, previous_fire_time: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
        fire: dt.datetime | None = super().get_next_fire_time(previous_fire_time, now)
        if fire is not None and previous_fire_time is not None:
            local_previous = previous_fire_time.astimezone(self.timezone).replace(tzinfo=None)
            if fire.astimezone(self.timezone).replace(tzinfo=None) == local_previous:
                fire = super().get_next_fire_time(fire, fire + dt.timedelta(hours=1))
        return fire


def trigger(when: WeeklyTime, settings: Settings) -> CronTrigger:
    """A weekly trigger at ``when``, local wall-clock time in the schedule's time zone."""
    return WallClockTrigger(day_of_week=when.day, hour=when.hour, minute=when.minute, timezone=settings.schedule_zone)


def resume_trigger(settings: Settings) -> IntervalTrigger:
    """Every ``schedule.resume_every`` minutes."""
    return IntervalTrigger(minutes=settings.schedule.resume_every, start_date=RESUME_EPOCH, timezone=dt.UTC)


def expire_trigger(settings: Settings) -> CronTrigger:
    """Every day at EXPIRE_AT, local time."""
    return WallClockTrigger(hour=EXPIRE_AT[0], minute=EXPIRE_AT[1], timezone=settings.schedule_zone)


def bounces_trigger(settings: Settings) -> IntervalTrigger:
    """Every hour, on the hour (UTC)."""
    return IntervalTrigger(hours=1, start_date=RESUME_EPOCH, timezone=dt.UTC)


def jobs(settings: Settings) -> dict[str, tuple[str, BaseTrigger]]:
    """Job id -> (function reference, trigger) for the configured mode."""
    found: dict[str, tuple[str, BaseTrigger]] = {
        SEND_JOB: ("newsletter.schedule:scheduled_send", trigger(settings.schedule.send, settings)),
        RESUME_JOB: ("newsletter.schedule:scheduled_resume", resume_trigger(settings)),
        EXPIRE_JOB: ("newsletter.schedule:scheduled_expire", expire_trigger(settings)),
    }
    if settings.bounces.imap is not None or settings.bounces.path is not None:
        found[BOUNCES_JOB] = ("newsletter.schedule:scheduled_bounces", bounces_trigger(settings))
    if settings.schedule.mode == "approve" and settings.schedule.draft is not None:
        found[DRAFT_JOB] = ("newsletter.schedule:scheduled_draft", trigger(settings.schedule.draft, settings))
    return found


@dataclass(frozen=True)
class NextRun:
    job: str
    local: dt.datetime
    utc: dt.datetime


def next_runs(settings: Settings, now: dt.datetime | None = None, count: int = 3) -> list[NextRun]:
    """The next ``count`` fire times of each weekly job and the next one of the resume
    and expire jobs, soonest first."""
    now = now or dt.datetime.now(dt.UTC)
    runs: list[NextRun] = []
    for job_id, (_func, trig) in jobs(settings).items():
        previous = None
        at = now
        for _ in range(1 if job_id in (RESUME_JOB, EXPIRE_JOB, BOUNCES_JOB) else count):
            fire = trig.get_next_fire_time(previous, at)
            if fire is None:
                break
            runs.append(NextRun(job_id, fire.astimezone(settings.schedule_zone), fire.astimezone(dt.UTC)))
            previous = at = fire
    return sorted(runs, key=lambda r: r.utc)


def make_scheduler(
    settings: Settings, scheduler_class: type[BaseScheduler] | None = None, jobstore_url: str | None = None
) -> BaseScheduler:
    """A scheduler whose job store is the project's database, refused like every command
    refuses it when it is missing, unreachable or behind (``database.auto_upgrade``
    upgrades it instead)."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    from newsletter.store.db import create_store_engine, open_database

    engine = create_store_engine(jobstore_url) if jobstore_url else open_database(settings)
    cls = scheduler_class or BackgroundScheduler
    return cls(
        jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename=JOBS_TABLE)},
        job_defaults={
            "coalesce": True,  # several missed runs become one
            "max_instances": 1,
            "misfire_grace_time": settings.schedule.misfire_grace_minutes * 60,
        },
        timezone=settings.schedule_zone,
    )


def install_jobs(scheduler: BaseScheduler, settings: Settings) -> list[str]:
    """Add the weekly jobs to a started (paused) scheduler, keeping the stored next run
    time of a job whose trigger did not change, so a run missed while the process was
    down is still made within the grace window after a restart. Returns what changed."""
    changes: list[str] = []
    wanted = jobs(settings)
    args = [str(settings.config_path.resolve())]
    for job in scheduler.get_jobs():
        if job.id not in wanted:
            scheduler.remove_job(job.id)
            changes.append(f"removed {job.id}")
    for job_id, (func, trig) in wanted.items():
        stored = scheduler.get_job(job_id)
        if (
            stored is not None
            and str(stored.trigger) == str(trig)
            and list(stored.args) == args
            and str(stored.trigger.timezone) == str(trig.timezone)
        ):
            continue
        scheduler.add_job(func, trig, id=job_id, name=job_id, args=args, replace_existing=True)
        changes.append(f"{'updated' if stored else 'added'} {job_id}")
    return changes


def run_scheduler(settings: Settings, stop: threading.Event | None = None) -> None:
    """Run the weekly jobs in the foreground until ``stop`` is set or the process is
    interrupted (Ctrl-C; the CLI turns SIGTERM into the same). Jobs are installed while
    the scheduler is paused, so a stored run that is due is judged against the grace
    window with the job as configured."""
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_SUBMITTED

    stop = stop or threading.Event()
    scheduler = make_scheduler(settings)
    running: set[str] = set()  # job ids between submission and their end
    scheduler.add_listener(lambda event: running.add(event.job_id), EVENT_JOB_SUBMITTED)
    scheduler.add_listener(lambda event: running.discard(event.job_id), EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.start(paused=True)
    resumed = False
    try:
        for change in install_jobs(scheduler, settings):
            log.info("%s", change)
        for job in scheduler.get_jobs():
            log.info("%s next runs at %s", job.id, job.next_run_time)
        scheduler.resume()
        resumed = True
        while not stop.wait(1):
            pass
        shutdown.request("the scheduler was stopped")
    except KeyboardInterrupt:
        # A send under way stops between requests (see send._Run.interrupt), not after
        # the issue; what is left is resumed by the next start.
        shutdown.request("the scheduler was stopped")
        if running:
            log.info("stopping: waiting for %s to stop", ", ".join(sorted(running)))
        else:
            log.info("stopping")
    finally:
        # Only a running scheduler is shut down: APScheduler 3 runs due jobs once when a
        # *paused* one shuts down, against executors already closed, which would lose a
        # missed run that the next start still makes within the grace window.
        if resumed:
            scheduler.shutdown(wait=True)
        log.info("scheduler stopped")


def scheduled_send(config_path: str) -> None:
    """The send job as the scheduler runs it: settings read fresh, outcome logged."""
    from newsletter import weekly

    _run_logged("send", lambda: weekly.run_week(load_settings(Path(config_path))))


def scheduled_draft(config_path: str) -> None:
    """The draft job (approve mode)."""
    from newsletter import weekly

    _run_logged("draft", lambda: weekly.draft_week(load_settings(Path(config_path))))


def scheduled_resume(config_path: str) -> None:
    """The resume job (see ``weekly.resume_unfinished``): quiet when nothing is
    unfinished; a failure is logged and the next run tries again."""
    from newsletter import weekly

    reports = _on_database(config_path, "weekly resume job", weekly.resume_unfinished)
    for report in reports or []:
        log.log(
            RESUME_LEVELS.get(report.outcome, logging.ERROR),
            "weekly resume job: %s: %s: %s",
            report.issue,
            report.outcome,
            report.message,
        )


def scheduled_expire(config_path: str) -> None:
    """The daily job: ``subscribers.expire_pending``; a failure is logged and tomorrow's
    run tries again."""
    from newsletter.store import subscribers

    done = _on_database(config_path, "daily expire job", lambda _, engine: subscribers.expire_pending(engine))
    if done is None:
        return
    log.info(
        "daily expire job: forgot %d unconfirmed sign-ups and %d unconfirmed sign-ups of people already on the list",
        done.subscribers,
        done.consents,
    )
    _retry_welcomes(Path(config_path))


def _retry_welcomes(config_path: Path) -> None:
    """The daily job's second half: welcome mails that failed are tried again."""
    from newsletter import welcome
    from newsletter.errors import NewsletterError
    from newsletter.senders import sender_for
    from newsletter.store.db import database

    settings = load_settings(config_path)
    if not settings.welcome.enabled:
        return
    try:
        with database(settings) as engine, sender_for(settings) as sender:
            done = welcome.retry_failed(engine, settings, sender, now=dt.datetime.now(dt.UTC))
    except NewsletterError as exc:
        log.error("daily welcome retry failed: %s", exc)
        return
    if done.sent or done.failed:
        log.info("daily welcome retry: %d sent, %d failed again", done.sent, done.failed)


def scheduled_bounces(config_path: str) -> None:
    """The hourly job: ``bounces.fetch``; a failure (mailbox unreachable, login refused)
    is logged and the next hour tries again."""
    from newsletter import bounces

    report = _on_database(config_path, "hourly bounces job", bounces.fetch)
    if report is None:
        return
    for ref, why in report.left:
        log.warning("hourly bounces job: %s: %s: %s; left in the mailbox", report.source, ref, why)
    log.info("hourly bounces job: %s: %s", report.source, report.summary())


def _on_database(config_path: str, job: str, call: Callable[[Settings, Engine], T]) -> T | None:
    """``call`` with fresh settings and the database; a failure is logged (the next run
    tries again) and gives None."""
    from newsletter.errors import NewsletterError
    from newsletter.store.db import database

    try:
        settings = load_settings(Path(config_path))
        with database(settings) as engine:
            return call(settings, engine)
    except NewsletterError as exc:
        log.error("%s failed: %s", job, exc)
        return None


def _run_logged(what: str, call: Any) -> None:
    from newsletter.errors import NewsletterError

    try:
        report = call()
    except NewsletterError as exc:
        log.error("weekly %s job failed: %s", what, exc)
        raise
    for warning in report.warnings:
        log.warning("%s", warning)
    (log.info if report.ok else log.error)("weekly %s job: %s: %s", what, report.outcome, report.message)
