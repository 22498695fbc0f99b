"""Real processes stopped mid-send: `newsletter send` over SMTP killed with SIGKILL leaves
only the messages under way ambiguous; SIGTERM during a backoff, or with a request that
never answers, exits 130 within seconds; and the scheduler stops its send between requests."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from newsletter import schedule, send
from newsletter.config import Settings, load_settings
from newsletter.errors import DeliveryError
from newsletter.sendbatch import GROUP_ROWS
from newsletter.senders.memory import MemorySender
from newsletter.store import ledger
from newsletter.store.tables import deliveries, subscribers
from tests.senders.conftest import Reply, SendgridStub, SmtpServer, smtp_delivery, start_smtp_server

from .conftest import bulk_subscribers
from .test_crash import sendgrid_config

pytestmark = pytest.mark.slow
SLUG = "2024-10-25"
RETRY_AFTER = 300  # seconds: what the stand-in asks for, far beyond any bound here


def newsletter(config: Path, *args: str) -> subprocess.Popen[str]:
    """``python -m newsletter --config CONFIG ARGS`` as a real process, output merged."""
    env = {**os.environ, "SENDGRID_API_KEY": "SG.test-key", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(config), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run(config: Path, *args: str) -> tuple[int, str]:
    """Run ``newsletter ARGS`` to its end: exit code and output."""
    proc = newsletter(config, *args)
    output, _ = proc.communicate(timeout=180)
    return proc.returncode, output


def stop_within(proc: subprocess.Popen[str], seconds: float) -> tuple[int | None, str, float]:
    """SIGTERM ``proc`` and wait up to ``seconds``: (exit code, None if it had to be
    killed, output, seconds it took)."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=seconds)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate(timeout=30)
        code = None
    return code, output, time.monotonic() - start


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], seconds: float = 60) -> None:
    """Until ``condition`` holds; fails if ``proc`` ends or ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the process ended first ({proc.returncode}): {proc.communicate()[0]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"still waiting after {seconds} s: {proc.communicate()[0]}")
        time.sleep(0.001)


def emails_in(engine: Engine, send_id: int, state: str) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(subscribers.c.email)
                .select_from(deliveries.join(subscribers, subscribers.c.id == deliveries.c.subscriber_id))
                .where(deliveries.c.send_id == send_id, deliveries.c.state == state)
            ).scalars()
        )


def frozen(engine: Engine) -> ledger.Send:
    found = ledger.get_send(engine, SLUG)
    assert found is not None
    return found


# --- SMTP: per-message outcomes ----------------------------------------------------------------

CONNECTIONS = 3


@pytest.fixture
def slow_smtp() -> Iterator[SmtpServer]:
    server = start_smtp_server()
    server.handler.delay = 0.004  # ~2,000 messages over three connections take a few seconds
    yield server
    server.stop()


def smtp_received(server: SmtpServer) -> Counter[str]:
    with server.handler.lock:
        return Counter(to for m in server.handler.messages for to in m.rcpt_tos)


def test_smtp_sigkill_leaves_only_the_messages_under_way_ambiguous(
    write_config, database_url, engine, issue_path, slow_smtp: SmtpServer
) -> None:
    emails = bulk_subscribers(engine, 2000)
    delivery = smtp_delivery(slow_smtp.port)
    delivery["smtp"]["connections"] = CONNECTIONS
    config = write_config(
        {"database": {"url": database_url}, "delivery": {**delivery, "batch_size": 500, "concurrency": 1}}
    )
    proc = newsletter(config, "send", str(issue_path))
    wait_for(lambda: len(slow_smtp.handler.messages) >= 300, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    time.sleep(0.2)  # the server finishes reading what was already on the wire
    slow_smtp.handler.delay = 0  # the resume need not be slow
    at_kill = smtp_received(slow_smtp)
    send_id = frozen(engine).id
    sent_at_kill = emails_in(engine, send_id, "sent")
    in_flight_at_kill = emails_in(engine, send_id, "in_flight")
    assert 300 <= sum(at_kill.values()) < 2000 and in_flight_at_kill, "the kill did not land mid-send"

    code, output = run(config, "send", str(issue_path))  # resumes to the end
    counts = ledger.counts(engine, send_id)
    ambiguous = emails_in(engine, send_id, "ambiguous")
    received = smtp_received(slow_smtp)
    assert max(received.values()) == 1, "someone got two copies"
    assert counts.pending == counts.in_flight == counts.rejected == counts.skipped == 0, output
    assert counts.sent + counts.ambiguous == 2000 and len(ambiguous) == counts.ambiguous
    assert code == 1 and f"ambiguous {counts.ambiguous:,}" in output, output
    # Everyone not ambiguous got exactly one copy; the ambiguous ones are among those the
    # killed process held without a recorded outcome (the rows it had not started were
    # given back and sent by the resume): each received once or not at all.
    assert all(received[e] == 1 for e in set(emails) - ambiguous)
    assert ambiguous <= in_flight_at_kill
    assert set(at_kill) - sent_at_kill <= ambiguous
    assert sent_at_kill <= set(at_kill)
    # SMTP has no delivery events: the operator is sent to the relay's log, not to SendGrid.
    flat = " ".join(output.split())
    assert "SendGrid" not in flat and "webhook" not in flat, output
    assert "check the relay's log for these addresses" in flat, output
    # The outcomes were written as they came: only an unwritten group commit and the
    # messages on the wire (one a connection) are unknown, not the rest of the batch.
    limit = GROUP_ROWS + CONNECTIONS
    never_received = ambiguous - set(received)
    assert counts.ambiguous <= limit, (
        f"{counts.ambiguous} recipients ambiguous after the kill (at most {limit} expected): "
        f"{len(ambiguous & set(received))} of them reached the server, {len(never_received)} never did "
        "(rows of the killed process's batch whose message was never started stay in flight and are "
        "made ambiguous with the rest when the batch expires)"
    )


# --- SendGrid: SIGTERM ---------------------------------------------------------------------------


def test_sigterm_during_a_retry_after_backoff_gives_the_rows_back(
    write_config, database_url, engine, issue_path, sendgrid_sink: SendgridStub
) -> None:
    emails = bulk_subscribers(engine, 300)
    config = sendgrid_config(write_config, database_url, sendgrid_sink, concurrency=4, max_retries=5)
    sendgrid_sink.default = Reply(status=503, headers={"Retry-After": str(RETRY_AFTER)}, body=b"busy")
    proc = newsletter(config, "send", str(issue_path))
    wait_for(lambda: len(sendgrid_sink.requests) >= 4, proc)  # each worker's batch was refused ...
    time.sleep(0.5)  # ... and it sleeps in its backoff
    code, output, took = stop_within(proc, 30)
    assert code is not None, f"still running {took:.0f} s after SIGTERM (a {RETRY_AFTER} s backoff): {output}"
    assert code == 130, output
    assert len(sendgrid_sink.requests) == 4 and not sendgrid_sink.received  # nothing more was sent
    counts = ledger.counts(engine, frozen(engine).id)
    assert counts.in_flight == 0, (
        f"{counts.in_flight} recipients left in flight (never sent, so ambiguous at the next send) by a "
        f"process that exited {took:.1f} s after SIGTERM: {output}"
    )
    assert (counts.pending, counts.ambiguous, counts.sent) == (300, 0, 0), output

    sendgrid_sink.default = Reply()
    code, output = run(config, "send", str(issue_path))
    assert code == 0, output
    assert Counter(sendgrid_sink.received) == Counter(emails)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_with_a_request_unanswered_exits_after_shutdown_seconds(
    workers: int, write_config, database_url, engine, issue_path, sendgrid_sink: SendgridStub
) -> None:
    bulk_subscribers(engine, 200)
    config = sendgrid_config(
        write_config,
        database_url,
        sendgrid_sink,
        concurrency=workers,
        shutdown_seconds=2,
        sendgrid={"timeout_seconds": 60},
    )
    sendgrid_sink.default = Reply(late=120)  # read and accepted; answered when the test ends
    proc = newsletter(config, "send", str(issue_path))
    wait_for(lambda: len(sendgrid_sink.requests) >= workers, proc)  # each worker's request arrived
    code, output, took = stop_within(proc, 30)
    assert code is not None, f"still running {took:.0f} s after SIGTERM (the timeout is 60 s): {output}"
    assert code == 130, output
    assert len(sendgrid_sink.requests) == workers
    send_id = frozen(engine).id
    counts = ledger.counts(engine, send_id)
    out = 50 * workers
    # The requests may have arrived: their rows are ambiguous, not given back, not in flight.
    assert counts.in_flight == 0, (
        f"{counts.in_flight} recipients left in flight, not recorded ambiguous, by a process that exited "
        f"{took:.1f} s after SIGTERM (shutdown_seconds: 2): {output}"
    )
    assert (counts.ambiguous, counts.pending, counts.sent) == (out, 200 - out, 0), output
    assert emails_in(engine, send_id, "ambiguous") == set(sendgrid_sink.received)
    assert f"stopped mid-request: {out} recipients" in " ".join(output.split()), output


# --- the scheduler ---------------------------------------------------------------------------------


def _plant_due_resume_job(settings: Settings) -> None:
    """Store the jobs as a scheduler that last ran a while ago left them, the resume job
    due a minute ago: the next `newsletter schedule` runs it as soon as it starts."""
    scheduler = schedule.make_scheduler(settings)
    scheduler.start(paused=True)
    schedule.install_jobs(scheduler, settings)
    scheduler.modify_job(schedule.RESUME_JOB, next_run_time=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    # Out of the scheduler before it shuts down, so that nothing runs the due job here.
    scheduler.remove_jobstore("default")
    scheduler.shutdown()


def test_sigterm_stops_the_schedulers_send_between_requests(
    write_config, database_url, engine, issue_path, sendgrid_sink: SendgridStub
) -> None:
    emails = bulk_subscribers(engine, 2000)
    workers = 2
    config = sendgrid_config(
        write_config, database_url, sendgrid_sink, concurrency=workers, sendgrid={"batch_size": 20}
    )
    settings = load_settings(config, env={"SENDGRID_API_KEY": "SG.test-key"})
    # A send started and stopped: the audience frozen, everyone still pending.
    outage = MemorySender(max_batch_size=20, fail_on={n: DeliveryError("503") for n in range(1, 50)})
    assert send.send_issue(settings, issue_path, engine=engine, sender=outage, sleep=lambda _s: None).pending == 2000
    _plant_due_resume_job(settings)
    sendgrid_sink.default = Reply(late=0.5)  # 100 requests, two at a time: 25 s for the whole issue

    proc = newsletter(config, "schedule")
    wait_for(lambda: sendgrid_sink.count >= 4, proc)  # the resume job is sending
    before = sendgrid_sink.count
    code, output, took = stop_within(proc, 60)
    after = sendgrid_sink.count - before
    assert code == 0, output
    assert "weekly-resume" in output and "scheduler stopped" in output and "Traceback" not in output, output
    assert after <= workers + 1, f"{after} requests after SIGTERM, {took:.1f} s to stop: {output}"
    assert took < 10, f"{took:.1f} s to stop: {output}"
    send_id = frozen(engine).id
    counts = ledger.counts(engine, send_id)
    assert counts.in_flight == counts.ambiguous == 0 and counts.pending > 0, output
    assert emails_in(engine, send_id, "sent") == set(sendgrid_sink.received)

    sendgrid_sink.default = Reply()
    code, output = run(config, "send", str(issue_path))
    assert code == 0, output
    assert Counter(sendgrid_sink.received) == Counter(emails)
