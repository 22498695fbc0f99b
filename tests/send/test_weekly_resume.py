"""The scheduler's resume job (issue 10) on SQLite and PostgreSQL: a weekly run that
stopped with recipients unsent is finished later, nobody twice; ambiguous recipients
wait for the provider's events; a draft, a changed issue or a send another process is
working on is not resumed; past the deadline the send is given up and the editors are
told once, even by two schedulers; and real schedulers on one database firing the same
send or resume at once."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from sqlalchemy import Engine

from newsletter import issuefile, schedule, send, weekly
from newsletter.config import Settings, load_settings
from newsletter.demo import SAMPLE_AS_OF
from newsletter.errors import DeliveryError
from newsletter.senders.memory import MemorySender
from newsletter.store import batches, events, ledger
from newsletter.store.db import create_store_engine
from tests.senders.conftest import SendgridStub

from .conftest import add_subscribers, bulk_subscribers

UTC = dt.UTC
EDITORS = ["desk@news.example.org"]
ISSUE = "2024-10-25"
QUARTER = dt.timedelta(minutes=15)


@pytest.fixture
def configure(write_config: Callable[..., Path], database_url: str) -> Callable[..., Settings]:
    """Settings on the test database with editors to tell; one worker and no retries, so a
    failing call stops the run at once."""

    def make(*, schedule: dict[str, Any] | None = None, delivery: dict[str, Any] | None = None) -> Settings:
        return load_settings(
            write_config(
                {
                    "database": {"url": database_url},
                    "editors": EDITORS,
                    "delivery": {"batch_size": 2, "concurrency": 1, "max_retries": 0, **(delivery or {})},
                    "schedule": schedule or {},
                }
            ),
            env={},
        )

    return make


def _outage_from(call: int, batch_size: int = 2) -> MemorySender:
    """A provider that fails every call from the ``call``-th on (503: nothing accepted)."""
    return MemorySender(
        max_batch_size=batch_size, fail_on={n: DeliveryError("503 Service Unavailable") for n in range(call, 500)}
    )


def _frozen(engine: Engine) -> ledger.Send:
    found = ledger.get_send(engine, ISSUE)
    assert found is not None
    return found


def _outcomes(reports: list[weekly.ResumeReport]) -> list[tuple[str, str]]:
    return [(r.issue, r.outcome) for r in reports]


def _local(settings: Settings, when: dt.datetime) -> str:
    return f"{when.astimezone(settings.schedule_zone):%a %Y-%m-%d %H:%M %Z}"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_the_resume_job_finishes_what_the_weekly_run_left_pending(configure, engine: Engine, project: Path) -> None:
    (project / f"issues/{ISSUE}.yaml").unlink()  # auto mode: the weekly run gathers it
    settings = configure()
    emails = add_subscribers(engine, 6)
    outage = _outage_from(2)
    report = weekly.run_week(settings, SAMPLE_AS_OF, engine=engine, sender=outage)
    frozen = _frozen(engine)
    deadline = weekly.resume_deadline(settings, frozen)
    assert deadline == frozen.created_at + dt.timedelta(hours=24)
    assert report.outcome == "incomplete" and "503 Service Unavailable" in report.message
    assert f"`newsletter schedule` resumes it every 15 min until {_local(settings, deadline)}" in report.message
    [unfinished] = weekly.resumable(settings, engine)
    assert unfinished.send.issue == ISSUE and unfinished.deadline == deadline and not unfinished.busy
    assert unfinished.progress == "2 sent, 4 unsent (4 pending, 0 ambiguous, 0 in flight)"
    # a quarter of an hour later the provider is still down
    still_down = _outage_from(1)
    reports = weekly.resume_unfinished(settings, engine, sender=still_down, now=frozen.created_at + QUARTER)
    assert _outcomes(reports) == [(ISSUE, "incomplete")]
    assert "2 sent, 4 unsent (4 pending" in reports[0].message and "503 Service Unavailable" in reports[0].message
    # then it is back
    good = MemorySender(max_batch_size=2)
    reports = weekly.resume_unfinished(settings, engine, sender=good, now=frozen.created_at + 2 * QUARTER)
    assert _outcomes(reports) == [(ISSUE, "sent")] and "6 sent, 0 unsent" in reports[0].message
    received = Counter(address for _issue, address in outage.delivered + still_down.delivered + good.delivered)
    assert sorted(received) == sorted(emails) and set(received.values()) == {1}
    assert issuefile.load(project / f"issues/{ISSUE}.yaml").status == "sent"
    assert weekly.resume_unfinished(settings, engine, sender=good, now=frozen.created_at + 3 * QUARTER) == []
    assert weekly.run_week(settings, SAMPLE_AS_OF + dt.timedelta(hours=1), engine=engine).outcome == "already-sent"
    assert len(good.delivered) == 4


def test_ambiguous_recipients_wait_for_the_providers_events(configure, engine: Engine, issue_path: Path) -> None:
    settings = configure()
    emails = add_subscribers(engine, 4)
    unsure = MemorySender(max_batch_size=2, ambiguous={emails[0]: "timed out after the request was sent"})
    first = send.send_issue(settings, issue_path, engine=engine, sender=unsure)
    assert first.ambiguous == 1 and first.pending == 0
    frozen = _frozen(engine)
    untouched = MemorySender()
    reports = weekly.resume_unfinished(settings, engine, sender=untouched, now=frozen.created_at + QUARTER)
    assert _outcomes(reports) == [(ISSUE, "incomplete")] and "(0 pending, 1 ambiguous" in reports[0].message
    # SendGrid's webhook reports the delivery; the next resume finishes the send
    [(batch_id, key)] = [
        (b.batch_id, d.key) for b in unsure.batches for d in b.deliveries if d.recipient.email == emails[0]
    ]
    events.apply_events(
        engine,
        [
            {
                "sg_event_id": "ev-1",
                "event": "delivered",
                "email": emails[0],
                "newsletter_issue": ISSUE,
                "newsletter_batch": batch_id,
                "newsletter_delivery": str(key),
            }
        ],
    )
    reports = weekly.resume_unfinished(settings, engine, sender=untouched, now=frozen.created_at + 2 * QUARTER)
    assert _outcomes(reports) == [(ISSUE, "sent")]
    assert untouched.calls == 0 and untouched.checks == 0  # nothing was sent again
    assert issuefile.load(issue_path).status == "sent"


def test_an_approve_mode_issue_set_back_to_draft_is_not_resumed(configure, engine: Engine, issue_path: Path) -> None:
    settings = configure(schedule={"mode": "approve", "draft": {"day": "thu", "time": "15:00"}})
    emails = add_subscribers(engine, 4)
    outage = _outage_from(2)
    friday = dt.datetime(2024, 10, 25, 14, 0, tzinfo=UTC)
    assert weekly.run_week(settings, friday, engine=engine, sender=outage).outcome == "incomplete"
    _edit(issue_path, "\nstatus: approved\n", "\nstatus: draft\n")
    frozen = _frozen(engine)
    good = MemorySender(max_batch_size=2)
    reports = weekly.resume_unfinished(settings, engine, sender=good, now=frozen.created_at + QUARTER)
    assert _outcomes(reports) == [(ISSUE, "refused")]
    assert "is a draft" in reports[0].message and "resumes it every 15 min until" in reports[0].message
    assert good.batches == []
    # an editor approves it again: the next resume sends the rest
    send.approve(issue_path)
    reports = weekly.resume_unfinished(settings, engine, sender=good, now=frozen.created_at + 2 * QUARTER)
    assert _outcomes(reports) == [(ISSUE, "sent")]
    received = Counter(address for _issue, address in outage.delivered + good.delivered)
    assert sorted(received) == sorted(emails) and set(received.values()) == {1}


def test_a_changed_issue_is_refused_then_given_up_and_the_editors_told_once(
    configure, engine: Engine, issue_path: Path, database_url: str
) -> None:
    settings = configure()
    add_subscribers(engine, 4)
    outage = _outage_from(2)
    send.send_issue(settings, issue_path, engine=engine, sender=outage)
    _edit(issue_path, 'subject: "Diplomacy Watch:', 'subject: "Changed: Diplomacy Watch:')
    frozen = _frozen(engine)
    good = MemorySender(max_batch_size=2)
    reports = weekly.resume_unfinished(settings, engine, sender=good, now=frozen.created_at + dt.timedelta(hours=23))
    assert _outcomes(reports) == [(ISSUE, "refused")] and "changed since its audience was frozen" in reports[0].message
    # past the deadline, two schedulers at once (each with its own connections)
    notices = [MemorySender(), MemorySender()]
    found: list[list[weekly.ResumeReport]] = [[], []]
    together = threading.Barrier(2)
    late = weekly.resume_deadline(settings, frozen) + dt.timedelta(minutes=1)

    def scheduler(n: int) -> None:
        own = create_store_engine(database_url)
        try:
            together.wait()
            found[n] = weekly.resume_unfinished(settings, own, sender=notices[n], now=late)
        finally:
            own.dispose()

    threads = [threading.Thread(target=scheduler, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    outcomes = [r.outcome for reports in found for r in reports]
    assert outcomes.count("gave-up") == 1 and set(outcomes) <= {"gave-up", "busy"}, outcomes
    [notice] = [batch for sender in notices for batch in sender.batches]
    assert notice.issue == "notice" and [d.recipient.email for d in notice.deliveries] == EDITORS
    assert notice.email.subject == f"[Statecraft Review] Not finished: {frozen.subject}"
    assert "2 sent, 2 unsent (2 pending, 0 ambiguous, 0 in flight)" in notice.email.text
    assert f"newsletter send {issue_path} --status" in notice.email.text
    assert _frozen(engine).gave_up_at == late
    # later runs leave it alone
    assert weekly.resume_unfinished(settings, engine, sender=notices[0], now=late + QUARTER) == []
    assert weekly.resumable(settings, engine) == []
    assert len(notices[0].batches + notices[1].batches) == 1 and good.batches == []


def test_past_the_deadline_nothing_more_is_sent(configure, engine: Engine, issue_path: Path) -> None:
    settings = configure(schedule={"notify_editors": False, "resume_deadline": 2})
    add_subscribers(engine, 4)
    send.send_issue(settings, issue_path, engine=engine, sender=_outage_from(2))
    frozen = _frozen(engine)
    late = MemorySender()
    at_deadline = frozen.created_at + dt.timedelta(hours=2)
    reports = weekly.resume_unfinished(settings, engine, sender=late, now=at_deadline)
    assert _outcomes(reports) == [(ISSUE, "gave-up")] and "2 h after its audience was frozen" in reports[0].message
    assert late.batches == []  # neither the subscribers nor, with notify_editors off, the editors
    assert _frozen(engine).gave_up_at == at_deadline


def test_a_send_another_process_is_working_on_is_left_to_it(configure, engine: Engine, issue_path: Path) -> None:
    settings = configure()
    add_subscribers(engine, 4)
    send.send_issue(settings, issue_path, engine=engine, sender=_outage_from(1))
    batches.claim_batch(engine, _frozen(engine).id, 2, "live-batch", owner="elsewhere:4242:alive", lease_seconds=600)
    idle = MemorySender()
    reports = weekly.resume_unfinished(settings, engine, sender=idle)
    assert _outcomes(reports) == [(ISSUE, "busy")]
    assert idle.calls == 0 and idle.checks == 0
    [unfinished] = weekly.resumable(settings, engine)
    assert unfinished.busy and unfinished.counts.in_flight == 2


# --- real schedulers on one database --------------------------------------------------------


def _fire_together(settings: Settings, tmp_path: Path, func: str, count: int = 2) -> list[JobExecutionEvent]:
    """``count`` real schedulers on the settings' database all run ``func`` at the same
    second, as two ``newsletter schedule`` processes on one database can both take a due
    job (each has its own job store here, so that both surely fire)."""
    finished: list[JobExecutionEvent] = []
    all_done = threading.Event()

    def record(event: JobExecutionEvent) -> None:
        finished.append(event)
        if len(finished) == count:
            all_done.set()

    at = dt.datetime.now(UTC) + dt.timedelta(seconds=1)
    schedulers = [
        schedule.make_scheduler(settings, BackgroundScheduler, f"sqlite:///{tmp_path / f'jobs-{n}.db'}")
        for n in range(count)
    ]
    try:
        for scheduler in schedulers:
            scheduler.add_listener(record, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
            scheduler.start()
            scheduler.add_job(func, DateTrigger(at), args=[str(settings.config_path)], id="together")
        assert all_done.wait(90), finished
    finally:
        for scheduler in schedulers:
            scheduler.shutdown(wait=True)
    assert [e.exception for e in finished] == [None] * count
    return finished


@pytest.fixture
def on_sendgrid(configure, sendgrid_sink: SendgridStub, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """``configure`` with the SendGrid backend pointed at the local stand-in."""
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.test")

    def make(**schedule: Any) -> Settings:
        return configure(
            schedule=schedule,
            delivery={
                "backend": "sendgrid",
                "concurrency": 2,
                "sendgrid": {"host": sendgrid_sink.url, "batch_size": 50},
            },
        )

    return make


def _job_lines(caplog: pytest.LogCaptureFixture, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


@pytest.mark.slow
def test_two_schedulers_firing_the_weekly_send_send_it_once(
    on_sendgrid, engine: Engine, project: Path, tmp_path: Path, sendgrid_sink: SendgridStub, caplog
) -> None:
    settings = on_sendgrid()
    emails = bulk_subscribers(engine, 300)
    edition = weekly.edition_for_send(settings, dt.datetime.now(UTC)).isoformat()
    path = issuefile.path_for(settings.issues_dir, edition)
    example = issuefile.load(project / f"issues/{ISSUE}.yaml")
    issuefile.save(example.model_copy(update={"slug": edition, "status": "approved"}), path)
    with caplog.at_level(logging.INFO, logger="newsletter.schedule"):
        _fire_together(settings, tmp_path, "newsletter.schedule:scheduled_send")
    received = Counter(sendgrid_sink.received)
    assert sorted(received) == sorted(emails) and set(received.values()) == {1}
    lines = _job_lines(caplog, "weekly send job: ")
    assert len(lines) == 2 and all(line.split(": ")[1] in ("sent", "already-sent") for line in lines), lines
    assert issuefile.load(path).status == "sent"
    assert weekly.resumable(settings, engine) == []


@pytest.mark.slow
def test_two_schedulers_resuming_one_send_send_each_recipient_once(
    on_sendgrid, engine: Engine, issue_path: Path, tmp_path: Path, sendgrid_sink: SendgridStub, caplog
) -> None:
    settings = on_sendgrid()
    emails = bulk_subscribers(engine, 300)
    outage = _outage_from(2, batch_size=50)
    assert send.send_issue(settings, issue_path, engine=engine, sender=outage).pending == 250
    with caplog.at_level(logging.INFO, logger="newsletter.schedule"):
        _fire_together(settings, tmp_path, "newsletter.schedule:scheduled_resume")
    received = Counter(sendgrid_sink.received + [address for _issue, address in outage.delivered])
    assert sorted(received) == sorted(emails) and set(received.values()) == {1}
    assert issuefile.load(issue_path).status == "sent" and weekly.resumable(settings, engine) == []
    lines = _job_lines(caplog, "weekly resume job: ")
    assert f"weekly resume job: {ISSUE}: sent" in "\n".join(lines), lines
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], lines


@pytest.mark.slow
def test_two_schedulers_past_the_deadline_tell_the_editors_once(
    on_sendgrid, engine: Engine, issue_path: Path, tmp_path: Path, sendgrid_sink: SendgridStub, caplog
) -> None:
    settings = on_sendgrid(resume_deadline=0.0002)  # under a second: past it when the jobs fire
    bulk_subscribers(engine, 10)
    assert send.send_issue(settings, issue_path, engine=engine, sender=_outage_from(1)).pending == 10
    with caplog.at_level(logging.INFO, logger="newsletter.schedule"):
        _fire_together(settings, tmp_path, "newsletter.schedule:scheduled_resume")
    [notice] = sendgrid_sink.requests  # nothing went to subscribers
    assert notice.body["subject"] == f"[Statecraft Review] Not finished: {_frozen(engine).subject}"
    assert [to["email"] for p in notice.body["personalizations"] for to in p["to"]] == EDITORS
    assert len([line for line in _job_lines(caplog, "weekly resume job: ") if ": gave-up: " in line]) == 1
    assert _frozen(engine).gave_up_at is not None


def test_schedule_status_lists_unfinished_sends(configure, engine: Engine, issue_path: Path, capsys) -> None:
    from newsletter.cli import main

    settings = configure()
    add_subscribers(engine, 4)
    send.send_issue(settings, issue_path, engine=engine, sender=_outage_from(2), sleep=lambda _s: None)
    deadline = weekly.resume_deadline(settings, _frozen(engine))
    assert main(["--config", str(settings.config_path), "schedule", "--status"]) == 0
    out = capsys.readouterr().out
    assert (
        f"unfinished {ISSUE}: 2 sent, 2 unsent (2 pending, 0 ambiguous, 0 in flight); "
        f"resumed until {_local(settings, deadline)}"
    ) in out
