"""The schedule: cron triggers at local wall-clock time across DST, the real APScheduler
in-process with the project's database as job store, restarts, misfires, coalescing."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest
from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

from newsletter import schedule
from newsletter.cli import main
from newsletter.config import Settings, load_settings
from newsletter.errors import ConfigError

UTC = dt.UTC
RUNS: list[str] = []  # what record_run saw, for the in-process scheduler tests


def record_run(label: str) -> None:
    """A job the scheduler can store by reference (module-level, importable)."""
    RUNS.append(label)


@pytest.fixture(autouse=True)
def _clear_runs() -> None:
    RUNS.clear()


def _settings(write_config, **schedule_overrides) -> Settings:
    return load_settings(write_config({"schedule": schedule_overrides}), env={})


def _fires(settings: Settings, start: dt.datetime, count: int = 3) -> list[tuple[str, str]]:
    """The weekly send's next fire times, local and UTC."""
    return [
        (r.local.strftime("%a %Y-%m-%d %H:%M %Z"), r.utc.strftime("%Y-%m-%d %H:%M"))
        for r in schedule.next_runs(settings, start, count)
        if r.job == schedule.SEND_JOB
    ]


def test_new_york_spring_forward(write_config) -> None:
    settings = _settings(write_config, timezone="America/New_York", send={"day": "fri", "time": "09:00"})
    assert _fires(settings, dt.datetime(2024, 3, 2, tzinfo=UTC)) == [
        ("Fri 2024-03-08 09:00 EST", "2024-03-08 14:00"),
        ("Fri 2024-03-15 09:00 EDT", "2024-03-15 13:00"),  # DST began on Sunday, March 10
        ("Fri 2024-03-22 09:00 EDT", "2024-03-22 13:00"),
    ]


def test_new_york_fall_back_on_the_day_of_the_change(write_config) -> None:
    # A Sunday 01:30 send: on Nov 3, 2024 01:30 happens twice; it must run once.
    settings = _settings(write_config, timezone="America/New_York", send={"day": "sun", "time": "01:30"})
    fires = _fires(settings, dt.datetime(2024, 10, 26, tzinfo=UTC), 3)
    assert [f[0][:14] for f in fires] == ["Sun 2024-10-27", "Sun 2024-11-03", "Sun 2024-11-10"]
    assert fires[0][1] == "2024-10-27 05:30"
    assert fires[2][1] == "2024-11-10 06:30"


def test_new_york_spring_forward_gap(write_config) -> None:
    # 02:30 does not exist on Sunday, March 10, 2024 in New York: the run is not lost.
    settings = _settings(write_config, timezone="America/New_York", send={"day": "sun", "time": "02:30"})
    fires = _fires(settings, dt.datetime(2024, 3, 4, tzinfo=UTC), 2)
    assert fires[0][0].startswith("Sun 2024-03-10") and fires[1][0] == "Sun 2024-03-17 02:30 EDT"


def test_london_across_both_changes(write_config) -> None:
    settings = _settings(write_config, timezone="Europe/London", send={"day": "fri", "time": "07:00"})
    assert _fires(settings, dt.datetime(2024, 3, 23, tzinfo=UTC), 2) == [
        ("Fri 2024-03-29 07:00 GMT", "2024-03-29 07:00"),
        ("Fri 2024-04-05 07:00 BST", "2024-04-05 06:00"),
    ]
    assert _fires(settings, dt.datetime(2024, 10, 20, tzinfo=UTC), 2) == [
        ("Fri 2024-10-25 07:00 BST", "2024-10-25 06:00"),
        ("Fri 2024-11-01 07:00 GMT", "2024-11-01 07:00"),
    ]


def test_approve_mode_has_a_draft_job(write_config) -> None:
    settings = _settings(write_config, mode="approve", draft={"day": "thu", "time": "15:00"})
    jobs = [r.job for r in schedule.next_runs(settings, dt.datetime(2024, 10, 21, 0, 1, tzinfo=UTC), 1)]
    assert jobs == ["weekly-resume", "daily-expire", "weekly-draft", "weekly-send"]


def test_the_resume_job_runs_every_resume_every_minutes(write_config) -> None:
    settings = _settings(write_config, resume_every=20)
    runs = schedule.next_runs(settings, dt.datetime(2024, 10, 21, 9, 1, tzinfo=UTC), 3)
    resume = [r for r in runs if r.job == schedule.RESUME_JOB]
    assert [r.utc.strftime("%H:%M") for r in resume] == ["09:20"]  # the next one only
    assert resume[0].local.strftime("%H:%M %Z") == "05:20 EDT"  # in the schedule's time zone
    trigger = schedule.jobs(settings)[schedule.RESUME_JOB][1]
    fire = trigger.get_next_fire_time(resume[0].utc, resume[0].utc)
    assert fire is not None and fire - resume[0].utc == dt.timedelta(minutes=20)


def test_the_expire_job_runs_daily_at_local_time(write_config) -> None:
    settings = _settings(write_config)  # America/New_York; clocks fall back on Sun 2024-11-03
    trig = schedule.jobs(settings)[schedule.EXPIRE_JOB][1]
    fires, at = [], dt.datetime(2024, 11, 1, 12, 0, tzinfo=UTC)
    previous = None
    for _ in range(4):
        fire = trig.get_next_fire_time(previous, at)
        assert fire is not None
        fires.append(fire.astimezone(settings.schedule_zone).strftime("%a %H:%M %Z"))
        previous = at = fire
    assert fires == ["Sat 03:30 EDT", "Sun 03:30 EST", "Mon 03:30 EST", "Tue 03:30 EST"]
    runs = schedule.next_runs(settings, dt.datetime(2024, 11, 1, 12, 0, tzinfo=UTC), 3)
    assert [r.job for r in runs].count(schedule.EXPIRE_JOB) == 1  # like the resume job: the next one


def test_the_expire_job_forgets_unconfirmed_sign_ups(write_config, tmp_path: Path, caplog) -> None:
    import logging

    from newsletter.store import subscribers
    from newsletter.store.db import create_store_engine, upgrade_database

    url = f"sqlite:///{tmp_path / 'nl.db'}"
    config = write_config({"database": {"url": url}})
    upgrade_database(load_settings(config, env={}))
    engine = create_store_engine(url)
    try:
        long_ago = dt.datetime(2024, 10, 1, tzinfo=UTC)
        subscribers.sign_up(engine, "stale@example.org", consent=subscribers.Consent(at=long_ago), now=long_ago)
        subscribers.sign_up(engine, "fresh@example.org", consent=subscribers.Consent(at=subscribers.utcnow()))
        with caplog.at_level(logging.INFO, logger="newsletter.schedule"):
            schedule.scheduled_expire(str(config))
        assert subscribers.get(engine, "stale@example.org") is None
        assert subscribers.get(engine, "fresh@example.org") is not None
    finally:
        engine.dispose()
    assert [r.getMessage() for r in caplog.records if r.name == "newsletter.schedule"] == [
        "daily expire job: forgot 1 unconfirmed sign-ups and 0 unconfirmed sign-ups of people already on the list"
    ]


def test_the_expire_job_logs_an_unreachable_database_and_carries_on(write_config, caplog) -> None:
    import logging

    config = write_config({"database": {"url": "postgresql+psycopg://nobody@127.0.0.1:1/none"}})
    with caplog.at_level(logging.INFO, logger="newsletter.schedule"):
        schedule.scheduled_expire(str(config))  # tomorrow's run tries again
    [record] = [r for r in caplog.records if r.name == "newsletter.schedule"]
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert record.getMessage().startswith("daily expire job failed: cannot reach database")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"send": {"day": "fry", "time": "09:00"}}, "schedule.send.day: unknown day 'fry'"),
        ({"send": {"day": "fri", "time": "9am"}}, "schedule.send.time: invalid time '9am'"),
        ({"send": {"day": "fri", "time": "24:00"}}, "schedule.send.time: invalid time '24:00'"),
        ({"timezone": "America/Gotham"}, "schedule.timezone: unknown time zone 'America/Gotham'"),
        ({"mode": "approve"}, "schedule: mode approve needs a draft time"),
        ({"misfire_grace_minutes": 0}, "schedule.misfire_grace_minutes"),
    ],
)
def test_invalid_schedule_is_a_clear_error(write_config, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")):
        _settings(write_config, **overrides)


def test_status_command_prints_local_and_utc(write_config, capsys) -> None:
    path = write_config(
        {
            "schedule": {"timezone": "Europe/London", "send": {"day": "mon", "time": "06:15"}},
            "database": {"auto_upgrade": True},
        }
    )
    assert main(["--config", str(path), "schedule", "--status"]) == 0
    out = capsys.readouterr().out
    assert "resume: every 15 min, until 24 h after a send's audience was frozen" in out
    assert "no unfinished sends" in out
    assert "time zone Europe/London" in out
    lines = [l for l in out.splitlines() if l.startswith("weekly-send")]
    assert len(lines) == 3 and all("Mon " in l and " 06:15 " in l and "UTC" in l for l in lines)
    assert len([l for l in out.splitlines() if l.startswith("weekly-resume")]) == 1


# --- the real scheduler -------------------------------------------------------------------


def _scheduler(settings: Settings, db: Path) -> BackgroundScheduler:
    scheduler = schedule.make_scheduler(settings, BackgroundScheduler, f"sqlite:///{db}")
    assert isinstance(scheduler, BackgroundScheduler)
    return scheduler


def _wait(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_job_one_second_ahead_runs(settings: Settings, tmp_path: Path) -> None:
    scheduler = _scheduler(settings, tmp_path / "jobs.db")
    ran = threading.Event()
    scheduler.add_listener(lambda event: ran.set(), EVENT_JOB_EXECUTED)
    scheduler.start()
    try:
        scheduler.add_job(
            "tests.test_schedule:record_run",
            DateTrigger(dt.datetime.now(UTC) + dt.timedelta(seconds=1)),
            args=["soon"],
            id="soon",
        )
        assert ran.wait(10)
        assert RUNS == ["soon"]
    finally:
        scheduler.shutdown(wait=True)


def test_jobs_survive_a_restart(settings: Settings, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    first = _scheduler(settings, db)
    first.start(paused=True)
    assert schedule.install_jobs(first, settings) == ["added weekly-send", "added weekly-resume", "added daily-expire"]
    stored = {job.id: job.next_run_time for job in first.get_jobs()}
    first.shutdown()
    second = _scheduler(settings, db)
    second.start(paused=True)
    try:
        assert schedule.install_jobs(second, settings) == []  # kept as it was
        assert {job.id: job.next_run_time for job in second.get_jobs()} == stored
        job = second.get_job(schedule.SEND_JOB)
        assert job.func_ref == "newsletter.schedule:scheduled_send"
        assert job.args == (str(settings.config_path.resolve()),)
        assert job.coalesce is True and job.max_instances == 1
        assert job.misfire_grace_time == 120 * 60
        resume = second.get_job(schedule.RESUME_JOB)
        assert resume.func_ref == "newsletter.schedule:scheduled_resume"
        assert resume.args == job.args and resume.coalesce is True and resume.max_instances == 1
        assert str(resume.trigger) == "interval[0:15:00]"
        assert dt.timedelta(0) < resume.next_run_time - dt.datetime.now(UTC) <= dt.timedelta(minutes=15)
    finally:
        second.shutdown()


def test_a_changed_schedule_replaces_the_stored_job(settings: Settings, write_config, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    first = _scheduler(settings, db)
    first.start(paused=True)
    schedule.install_jobs(first, settings)
    first.shutdown()
    changed = load_settings(
        write_config({"schedule": {"send": {"day": "sat", "time": "10:30"}, "resume_every": 5}}), env={}
    )
    second = _scheduler(changed, db)
    second.start(paused=True)
    try:
        assert schedule.install_jobs(second, changed) == ["updated weekly-send", "updated weekly-resume"]
        assert second.get_job(schedule.SEND_JOB).next_run_time.strftime("%a %H:%M") == "Sat 10:30"
        assert second.get_job(schedule.RESUME_JOB).next_run_time.minute % 5 == 0
    finally:
        second.shutdown()


def _missed(settings: Settings, tmp_path: Path, late: dt.timedelta, every: dt.timedelta) -> tuple[list[str], list[str]]:
    """A stored job whose run time passed ``late`` ago while no scheduler was running:
    the job store holds it when the scheduler resumes."""
    from apscheduler.triggers.interval import IntervalTrigger

    scheduler = _scheduler(settings, tmp_path / "jobs.db")
    events: list[str] = []
    scheduler.add_listener(
        lambda e: events.append("missed" if e.code == EVENT_JOB_MISSED else "ran"),
        EVENT_JOB_EXECUTED | EVENT_JOB_MISSED,
    )
    scheduler.start(paused=True)
    try:
        scheduler.add_job(
            "tests.test_schedule:record_run",
            IntervalTrigger(seconds=every.total_seconds()),
            args=["weekly"],
            id="weekly",
            next_run_time=dt.datetime.now(UTC) - late,
        )
        scheduler.resume()
        assert _wait(lambda: bool(events), 5)
        time.sleep(0.3)  # time for a second (wrong) run to show up
    finally:
        scheduler.shutdown(wait=True)
    return events, list(RUNS)


def test_missed_runs_within_the_grace_window_run_once(settings: Settings, tmp_path: Path) -> None:
    # due every 10 minutes since 45 minutes ago: five runs missed, all within the window
    events, runs = _missed(settings, tmp_path, dt.timedelta(minutes=45), dt.timedelta(minutes=10))
    assert runs == ["weekly"] and events == ["ran"]  # coalesced: once, not five times


def test_a_run_missed_beyond_the_grace_window_is_dropped(settings: Settings, tmp_path: Path) -> None:
    # the weekly run was due 3 hours ago; the grace window is 2 hours: a stale issue stays unsent
    events, runs = _missed(settings, tmp_path, dt.timedelta(hours=3), dt.timedelta(days=7))
    assert runs == [] and events == ["missed"]


def test_the_weekly_send_job_runs_from_the_scheduler(write_config, tmp_path: Path, caplog) -> None:
    """``scheduled_send`` by reference, as the stored job runs it: a week with no new
    round-up (the sample feeds are from 2024) is skipped, and the scheduler says so."""
    import logging

    from newsletter.store.db import upgrade_database

    config = write_config({"database": {"url": f"sqlite:///{tmp_path / 'nl.db'}"}})
    settings = load_settings(config, env={})
    upgrade_database(settings)
    scheduler = _scheduler(settings, tmp_path / "nl.db")
    done = threading.Event()
    scheduler.add_listener(lambda event: done.set(), EVENT_JOB_EXECUTED)
    scheduler.start()
    try:
        with caplog.at_level(logging.INFO, logger="newsletter.schedule"):
            scheduler.add_job(
                "newsletter.schedule:scheduled_send",
                DateTrigger(dt.datetime.now(UTC) + dt.timedelta(seconds=1)),
                args=[str(config)],
                id=schedule.SEND_JOB,
            )
            assert done.wait(20)
    finally:
        scheduler.shutdown(wait=True)
    assert any(
        "weekly send job: skipped" in r.getMessage() and "no round-up" in r.getMessage() for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


def test_schedule_process_starts_and_stops_cleanly_on_sigterm(write_config, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from newsletter.store.db import upgrade_database

    config = write_config({"database": {"url": f"sqlite:///{tmp_path / 'nl.db'}"}})
    upgrade_database(load_settings(config, env={}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(config), "schedule"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    assert proc.stdout is not None
    watchdog = threading.Timer(30, proc.kill)  # a hung scheduler fails the test, not the run
    watchdog.start()
    for line in proc.stdout:
        lines.append(line)
        if "next runs at" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=20)
    watchdog.cancel()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "added weekly-send" in output and "added weekly-resume" in output and "scheduler stopped" in output
    assert "added daily-expire" in output
    assert "Traceback" not in output
    assert "INFO newsletter.schedule: stopping\n" in output  # no job was running: nothing to wait for
    assert "waiting for" not in output


@pytest.mark.parametrize("state", ["missing", "behind"])
def test_schedule_refuses_a_missing_or_outdated_database(write_config, tmp_path: Path, state: str) -> None:
    """Like every other command: it must not create a database holding only its job store."""
    import sqlite3

    db = tmp_path / "nl.db"
    if state == "behind":  # a database file without the schema
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE unrelated (x)")
        conn.close()
    config = write_config({"database": {"url": f"sqlite:///{db}"}})
    import subprocess
    import sys

    # A scheduler that starts runs until stopped: the timeout fails the test instead.
    done = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(config), "schedule"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    err = done.stderr
    assert done.returncode == 1
    assert ("does not exist yet" if state == "missing" else "has no schema yet") in err
    assert "newsletter db upgrade" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if state == "missing":
        assert not db.exists()
    else:  # no job store added to it
        with sqlite3.connect(db) as conn:
            assert [name for (name,) in conn.execute("SELECT name FROM sqlite_master")] == ["unrelated"]
        conn.close()


def test_the_resume_job_logs_an_unreachable_database_and_carries_on(write_config, caplog) -> None:
    import logging

    config = write_config({"database": {"url": "postgresql+psycopg://nobody@127.0.0.1:1/none"}})
    with caplog.at_level(logging.INFO, logger="newsletter.schedule"):
        schedule.scheduled_resume(str(config))  # the next run, N minutes later, tries again
    [record] = [r for r in caplog.records if r.name == "newsletter.schedule"]
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert record.getMessage().startswith(
        "weekly resume job failed: cannot reach database postgresql+psycopg://nobody@127.0.0.1:1/none"
    )


def test_run_with_an_unreachable_database_is_one_clear_line(write_config, project: Path, capsys) -> None:
    (project / "issues/2024-10-25.yaml").unlink()
    config = write_config({"database": {"url": "postgresql+psycopg://nobody@127.0.0.1:1/none"}})
    code = main(["--config", str(config), "run", "--as-of", "2024-10-25T21:00:00Z"])
    err = capsys.readouterr().err
    assert code != 0
    assert "cannot reach database postgresql+psycopg://nobody@127.0.0.1:1/none" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (project / "issues/2024-10-25.yaml").exists()  # failed before gathering


def test_run_with_a_bad_as_of_is_a_usage_error(settings: Settings, capsys) -> None:
    assert main(["--config", str(settings.config_path), "run", "--as-of", "next friday"]) == 2
    assert "not an ISO 8601 date or time" in capsys.readouterr().err
