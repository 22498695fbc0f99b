"""The weekly job end to end on SQLite and PostgreSQL: gather -> issue -> build -> send,
idempotent, skipping a week with nothing new, resuming a half-done send, approve mode,
and two weekly jobs at once on one database."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from newsletter import issuefile, send, weekly
from newsletter.config import Settings, load_settings
from newsletter.demo import SAMPLE_AS_OF
from newsletter.errors import PermanentDeliveryError
from newsletter.senders.memory import MemorySender
from tests.senders.conftest import SendgridStub

from .conftest import add_subscribers, bulk_subscribers

UTC = dt.UTC


@pytest.fixture
def fresh(db_settings: Settings, project: Path) -> Settings:
    """No hand-written issue for the sample week: the weekly job must gather it."""
    (project / "issues/2024-10-25.yaml").unlink()
    return db_settings


def test_auto_mode_gathers_builds_and_sends_once(fresh: Settings, engine, project: Path) -> None:
    emails = add_subscribers(engine, 3)
    report = weekly.run_week(fresh, SAMPLE_AS_OF, engine=engine)
    assert report.outcome == "sent", report.message
    assert report.edition == dt.date(2024, 10, 25)
    issue = issuefile.load(project / "issues/2024-10-25.yaml")
    assert issue.status == "sent" and issue.gathered is not None
    assert issue.roundup is not None and issue.roundup.title.startswith("Diplomacy Watch: Kyiv")
    files = sorted((project / "outbox/2024-10-25").glob("*.eml"))
    assert len(files) == 3 and all(any(e in f.name for e in emails) for f in files)
    again = weekly.run_week(fresh, SAMPLE_AS_OF + dt.timedelta(hours=2), engine=engine)
    assert again.outcome == "already-sent"
    assert sorted((project / "outbox/2024-10-25").glob("*.eml")) == files


def test_a_week_with_no_new_roundup_is_skipped(fresh: Settings, engine, project: Path) -> None:
    add_subscribers(engine, 2)
    assert weekly.run_week(fresh, SAMPLE_AS_OF, engine=engine).outcome == "sent"
    next_week = weekly.run_week(fresh, SAMPLE_AS_OF + dt.timedelta(days=7), engine=engine)
    assert next_week.outcome == "skipped" and "skipping this week" in next_week.message
    assert not (project / "issues/2024-11-01.yaml").exists()


def test_the_next_run_resumes_an_unfinished_send(fresh: Settings, engine, project: Path) -> None:
    emails = add_subscribers(engine, 6)
    failing = MemorySender(max_batch_size=2)
    failing.fail(2, PermanentDeliveryError("401 bad key"))
    first = weekly.run_week(fresh, SAMPLE_AS_OF, engine=engine, sender=failing)
    assert first.outcome == "incomplete" and not first.ok and "401 bad key" in first.message
    stamp = issuefile.load(project / "issues/2024-10-25.yaml").gathered
    good = MemorySender(max_batch_size=2)
    second = weekly.run_week(fresh, SAMPLE_AS_OF + dt.timedelta(hours=1), engine=engine, sender=good)
    assert second.outcome == "sent"
    assert issuefile.load(project / "issues/2024-10-25.yaml").gathered == stamp  # not gathered anew
    both = Counter(a for _i, a in failing.delivered + good.delivered)
    assert sorted(both) == sorted(emails) and set(both.values()) == {1}


def test_approve_mode_end_to_end(fresh: Settings, engine, write_config, database_url, project: Path) -> None:
    settings = load_settings(
        write_config(
            {
                "database": {"url": database_url},
                "schedule": {
                    "mode": "approve",
                    "draft": {"day": "thu", "time": "15:00"},
                    "send": {"day": "fri", "time": "09:00"},
                },
                "editors": ["desk@news.example.org"],
            }
        ),
        env={},
    )
    emails = add_subscribers(engine, 2)
    editors = MemorySender()
    draft = weekly.draft_week(settings, dt.datetime(2024, 10, 25, 19, 0, tzinfo=UTC), sender=editors)
    assert draft.outcome == "drafted" and draft.edition == dt.date(2024, 10, 25)
    assert editors.batches[0].email.subject.startswith("[TEST] Diplomacy Watch")
    assert [d.recipient.email for d in editors.batches[0].deliveries] == ["editors@news.example.org"]
    # Friday 09:00 New York: nobody approved it
    notices = MemorySender()
    unapproved = weekly.run_week(settings, dt.datetime(2024, 10, 25, 13, 0, tzinfo=UTC), engine=engine, sender=notices)
    assert unapproved.outcome == "skipped" and "not approved" in unapproved.message
    assert notices.batches[0].email.subject.startswith("[Statecraft Review] Not sent")
    assert [d.recipient.email for d in notices.batches[0].deliveries] == ["desk@news.example.org"]
    # an editor approves; the next run sends it
    send.approve(project / "issues/2024-10-25.yaml")
    subscribers_sender = MemorySender()
    sent = weekly.run_week(
        settings, dt.datetime(2024, 10, 25, 14, 0, tzinfo=UTC), engine=engine, sender=subscribers_sender
    )
    assert sent.outcome == "sent"
    assert sorted(a for _i, a in subscribers_sender.delivered) == sorted(emails)


def test_editions_follow_the_send_day_in_local_time(fresh: Settings) -> None:
    # Friday 23:30 in New York is already Saturday in UTC: still that Friday's edition
    late_friday = dt.datetime(2024, 10, 26, 3, 30, tzinfo=UTC)
    assert weekly.edition_for_send(fresh, late_friday) == dt.date(2024, 10, 25)
    assert weekly.edition_for_send(fresh, dt.datetime(2024, 10, 29, 12, tzinfo=UTC)) == dt.date(2024, 10, 25)
    assert weekly.edition_for_draft(fresh, dt.datetime(2024, 10, 24, 19, tzinfo=UTC)) == dt.date(2024, 10, 25)


@pytest.mark.slow
def test_two_weekly_jobs_at_once_send_once(
    fresh: Settings, engine, write_config, database_url, sendgrid_sink: SendgridStub, project: Path
) -> None:
    """Two schedulers on one database (a deployment mistake) firing at the same time."""
    emails = bulk_subscribers(engine, 800)
    config = write_config(
        {
            "database": {"url": database_url},
            "delivery": {
                "backend": "sendgrid",
                "concurrency": 2,
                "sendgrid": {"host": sendgrid_sink.url, "batch_size": 50},
            },
        }
    )
    env = {**os.environ, "SENDGRID_API_KEY": "SG.test"}
    command = [sys.executable, "-m", "newsletter", "--config", str(config), "run", "--as-of", "2024-10-25T21:00:00Z"]
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    received = Counter(sendgrid_sink.received)
    assert sorted(received) == sorted(emails), outputs
    assert set(received.values()) == {1}, outputs
    assert 0 in [p.returncode for p in procs], outputs
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert final.returncode == 0 and "already-sent" in final.stdout, final.stdout + final.stderr
    assert issuefile.load(project / "issues/2024-10-25.yaml").status == "sent"
