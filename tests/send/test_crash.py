"""Real processes: `newsletter send` killed with SIGKILL at random points and resumed, and
two `newsletter send` processes for one issue at once, against a recording stand-in for
SendGrid. Nobody may get two copies; only the reported ambiguous rows may be unknown."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from newsletter import issuefile
from newsletter.store import ledger

from tests.senders.conftest import SendgridStub

from .conftest import bulk_subscribers

pytestmark = pytest.mark.slow


def _config(write_config, database_url: str, sink: SendgridStub) -> Path:
    return write_config({
        "database": {"url": database_url},
        "delivery": {"backend": "sendgrid", "concurrency": 2, "max_retries": 2,
                     "sendgrid": {"host": sink.url, "batch_size": 50, "timeout_seconds": 10}},
    })


def _send(config: Path, issue: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "SENDGRID_API_KEY": "SG.test-key", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(config), "send", str(issue)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_sigkill_at_random_points_then_resume(write_config, database_url, engine, issue_path,
                                              sendgrid_sink: SendgridStub) -> None:
    emails = bulk_subscribers(engine, 3000)
    config = _config(write_config, database_url, sendgrid_sink)
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    kills = 0
    for _ in range(4):
        before = sendgrid_sink.count
        proc = _send(config, issue_path)
        # kill somewhere between start-up and a few batches into the send
        deadline = time.monotonic() + 20
        wait_for = rng.randint(1, 8)
        while sendgrid_sink.count < before + wait_for and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.06))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=30)
    final = _send(config, issue_path)
    output, _ = final.communicate(timeout=120)
    send = ledger.get_send(engine, "2024-10-25")
    assert send is not None
    counts = ledger.counts(engine, send.id)
    received = Counter(sendgrid_sink.received)
    assert kills >= 1, f"seed {seed}: no run was killed mid-send"
    assert max(received.values()) == 1, f"seed {seed}: someone got two copies"
    assert counts.pending == 0 and counts.skipped == 0 and counts.rejected == 0
    # a killed process's batches are ambiguous at once: its pid is gone from this host
    assert counts.in_flight == 0 and counts.sent + counts.ambiguous == 3000
    ambiguous = set(_ambiguous_emails(engine, send.id))
    assert len(ambiguous) == counts.ambiguous
    # everyone not ambiguous got exactly one copy; the ambiguous ones got at most one
    assert set(emails) - ambiguous <= set(received)
    if counts.ambiguous:
        assert final.returncode == 1 and "ambiguous" in output
        assert issuefile.load(issue_path).status == "approved"
    else:
        assert final.returncode == 0, output
        assert issuefile.load(issue_path).status == "sent"


def _ambiguous_emails(engine, send_id: int) -> list[str]:
    from sqlalchemy import select

    from newsletter.store.tables import deliveries, subscribers

    with engine.connect() as conn:
        return list(conn.execute(
            select(subscribers.c.email).select_from(
                deliveries.join(subscribers, subscribers.c.id == deliveries.c.subscriber_id))
            .where(deliveries.c.send_id == send_id, deliveries.c.state == "ambiguous")
        ).scalars())


def test_two_send_processes_for_one_issue(write_config, database_url, engine, issue_path,
                                          sendgrid_sink: SendgridStub) -> None:
    emails = bulk_subscribers(engine, 1500)
    config = _config(write_config, database_url, sendgrid_sink)
    procs = [_send(config, issue_path), _send(config, issue_path)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    received = Counter(sendgrid_sink.received)
    assert sorted(received) == sorted(emails), outputs
    assert set(received.values()) == {1}
    assert [p.returncode for p in procs] == [0, 0], outputs  # the second waits for the first
    send = ledger.get_send(engine, "2024-10-25")
    assert send is not None and ledger.counts(engine, send.id).sent == 1500
    # whichever finished last marked the issue sent
    assert issuefile.load(issue_path).status == "sent"
