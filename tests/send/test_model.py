"""The send guarantee as a property, checked by a seeded random model: 2-3 real `newsletter
send` processes, the operator's commands (`--status`, `--reconcile`, `--settle-ambiguous
sent|resend`, `--batch`) and faults (SIGSTOP past the lease then SIGCONT, SIGKILL,
SIGTERM, late answers, resets, 429/5xx, dropped SMTP connections, terminated database
connections) against the SendGrid stand-in or aiosmtpd, on SQLite and PostgreSQL.

Counted from what the servers recorded, after every run: nobody received two copies
unless the ledger reported them ambiguous and the operator chose to resend; nobody was
lost; and no ledger row was ever in a state the operator cannot see and settle. A fixed
set of seeds runs in CI; `pytest --long tests/send/test_model.py` runs many more.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from newsletter.store import ledger
from tests.senders.conftest import SendgridStub, SmtpServer, smtp_delivery, start_smtp_server

from .conftest import bulk_subscribers
from .test_crash import SLUG

pytestmark = pytest.mark.slow

CI_SEEDS = [11, 12, 13, 14]
LONG_SEEDS = list(range(100, 160))
SUBSCRIBERS = 400


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        metafunc.parametrize("seed", LONG_SEEDS if metafunc.config.getoption("--long") else CI_SEEDS)


@dataclass
class World:
    """What the model runs against and what it has seen."""

    rng: random.Random
    config: Path
    engine: Engine
    backend: str
    stub: SendgridStub | None
    smtp: SmtpServer | None
    app_name: str
    running: list[subprocess.Popen[str]] = field(default_factory=list)
    paused: dict[int, float] = field(default_factory=dict)  # pid -> when it was paused (monotonic)
    resent: set[str] = field(default_factory=set)  # addresses the operator chose to send again
    log: list[str] = field(default_factory=list)

    def received(self) -> list[str]:
        """Every copy the servers accepted, by address."""
        if self.stub is not None:
            return self.stub.received
        assert self.smtp is not None
        with self.smtp.handler.lock:
            return [to for envelope in self.smtp.handler.messages for to in envelope.rcpt_tos]

    def env(self) -> dict[str, str]:
        return {**os.environ, "SENDGRID_API_KEY": "SG.test-key", "PYTHONUNBUFFERED": "1", "PGAPPNAME": self.app_name}

    def command(self, *options: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "newsletter", "--config", str(self.config), "send", str(self.issue), *options],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        self.log.append(f"send {' '.join(options)} -> {done.returncode}")
        return done.returncode, done.stdout + done.stderr

    issue: Path = Path()


def _start(world: World) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(world.config), "send", str(world.issue)],
        env=world.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    world.running.append(proc)
    world.log.append(f"start {proc.pid}")


def _alive(world: World) -> list[subprocess.Popen[str]]:
    world.running = [p for p in world.running if p.poll() is None or p.pid in world.paused]
    return world.running


def _signal(world: World, sig: signal.Signals) -> None:
    candidates = [p for p in _alive(world) if p.pid not in world.paused]
    if not candidates:
        return
    proc = world.rng.choice(candidates)
    proc.send_signal(sig)
    world.log.append(f"{sig.name} {proc.pid}")
    if sig == signal.SIGSTOP:
        world.paused[proc.pid] = time.monotonic()


def _resume(world: World) -> None:
    """SIGCONT a process paused past its lease (a frozen VM, not a hiccup)."""
    for proc in world.running:
        if time.monotonic() - world.paused.get(proc.pid, time.monotonic()) > 2.5:
            proc.send_signal(signal.SIGCONT)
            del world.paused[proc.pid]
            world.log.append(f"SIGCONT {proc.pid}")
            return


def _ambiguous(world: World) -> dict[str, list[str]]:
    """Batch -> addresses of its ambiguous rows, as the ledger reports them."""
    send = ledger.get_send(world.engine, SLUG)
    if send is None:
        return {}
    with world.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT d.batch_id, s.email FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id "
                "WHERE d.send_id = :s AND d.state = 'ambiguous'"
            ),
            {"s": send.id},
        ).all()
    found: dict[str, list[str]] = {}
    for batch_id, email in rows:
        found.setdefault(batch_id, []).append(email)
    return found


def _settle(world: World, *, by_truth: bool) -> None:
    """The operator settles ambiguous batches: after looking at what the server got (the
    provider's activity log, the relay's log), or, careless, by sending them all again."""
    for batch_id, emails in _ambiguous(world).items():
        received = set(world.received())
        arrived = all(e in received for e in emails) if by_truth else False
        if by_truth and not arrived and any(e in received for e in emails):
            arrived = False  # some arrived (SMTP settles per message): send the batch again
        decision = "sent" if arrived else "resend"
        if decision == "resend":
            world.resent.update(emails)
        code, output = world.command("--settle-ambiguous", decision, "--batch", batch_id)
        if decision == "resend":
            assert code in (0, 1, 130), output
        else:
            assert code == 0 or "still in flight" in output, output
        if world.rng.random() < 0.5:
            return


def _terminate_connections(world: World) -> None:
    if world.engine.dialect.name != "postgresql":
        return
    with world.engine.connect() as conn:
        conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :n"),
            {"n": world.app_name},
        )
    world.log.append("pg_terminate_backend")


def _check_visible(world: World) -> None:
    """Whatever happened, every row is in a state `--status` explains and an operator can
    settle: after its sweep, no row is in flight outside a batch in flight."""
    code, output = world.command("--status")
    assert code == 0, output
    with world.engine.connect() as conn:
        orphans = conn.exec_driver_sql(
            "SELECT count(*) FROM deliveries d LEFT JOIN send_batches b ON b.batch_id = d.batch_id "
            "WHERE d.state = 'in_flight' AND (b.state IS NULL OR b.state <> 'in_flight')"
        ).scalar_one()
        misplaced = conn.exec_driver_sql(
            "SELECT count(*) FROM deliveries WHERE (state = 'pending') <> (batch_id IS NULL)"
        ).scalar_one()
    assert orphans == 0, output
    assert misplaced == 0


ACTIONS = {
    "start": 4,
    "kill": 2,
    "pause": 3,
    "resume": 3,
    "term": 1,
    "status": 1,
    "reconcile": 1,
    "settle": 3,
    "careless": 1,
    "blip": 1,
    "wait": 4,
}


def _step(world: World) -> None:
    action = world.rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
    if action == "start" and len(_alive(world)) < 3:
        _start(world)
    elif action == "kill":
        _signal(world, signal.SIGKILL)
    elif action == "pause":
        _signal(world, signal.SIGSTOP)
    elif action == "resume":
        _resume(world)
    elif action == "term":
        _signal(world, signal.SIGTERM)
    elif action == "status":
        _check_visible(world)
    elif action == "reconcile":
        world.command("--reconcile")
    elif action in ("settle", "careless"):
        world.command("--reconcile")  # as the README says: first what the events settle
        _settle(world, by_truth=action == "settle")
    elif action == "blip":
        _terminate_connections(world)
    elif action == "wait":  # long enough, at times, for a paused process's lease to run out
        time.sleep(world.rng.uniform(0.5, 3.0))
    time.sleep(world.rng.uniform(0.05, 0.5))


def _finish(world: World) -> None:
    """Every paused process resumed, the faults turned off, the processes left to end;
    then what an operator does until the issue is sent: reconcile, decide each ambiguous
    batch from the server's log, send."""
    for proc in world.running:
        if proc.pid in world.paused:
            proc.send_signal(signal.SIGCONT)
    world.paused.clear()
    if world.stub is not None:
        world.stub.faults = None
        world.stub.replies.clear()
    if world.smtp is not None:
        handler = world.smtp.handler
        handler.drop_at_mail.clear(), handler.drop_at_data.clear(), handler.drop_after_queue.clear()
    for proc in world.running:
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    time.sleep(2.5)  # past the lease of a process killed last
    for _ in range(8):
        _check_visible(world)
        world.command("--reconcile")
        _settle(world, by_truth=True)
        code, output = world.command()
        if code == 0 and ("every recipient is settled" in output or "already sent" in output):
            return
    raise AssertionError(f"the issue never finished: {output}\n" + "\n".join(world.log))


@pytest.mark.parametrize("backend", ["sendgrid", "smtp"])
def test_nobody_gets_an_unreported_copy_and_nobody_is_lost(
    seed: int, backend: str, write_config, database_url: str, engine: Engine, issue_path: Path
) -> None:
    rng = random.Random(f"{seed}-{backend}-{engine.dialect.name}")
    emails = bulk_subscribers(engine, SUBSCRIBERS)
    stub: SendgridStub | None = None
    smtp: SmtpServer | None = None
    delivery: dict[str, Any] = {
        "concurrency": 2,
        "max_retries": 3,
        "lease_seconds": 2,
        "shutdown_seconds": 2,
        "max_ambiguous_batches": 50,
    }
    if backend == "sendgrid":
        stub = SendgridStub(delay=0.02)
        stub.late_seconds = 1.5
        stub.retry_after = "3"  # a backoff long enough to be paused in
        stub.inject(0.3, seed, ("late", "close", "drop", "throttle", "throttle", "throttle", "unavailable"))
        stub.thread.start()
        delivery.update(backend="sendgrid", sendgrid={"host": stub.url, "batch_size": 25, "timeout_seconds": 1})
    else:
        smtp = start_smtp_server()
        smtp.handler.delay = 0.004
        picks = range(1, SUBSCRIBERS * 3)
        smtp.handler.drop_at_mail.update(rng.sample(picks, 6))
        smtp.handler.drop_at_data.update(rng.sample(picks, 6))
        smtp.handler.drop_after_queue.update(rng.sample(picks, 6))
        delivery.update(smtp_delivery(smtp.port), batch_size=40)
        delivery["smtp"]["connections"] = 2
        delivery["smtp"]["timeout_seconds"] = 2
    config = write_config({"database": {"url": database_url, "retry_seconds": 5}, "delivery": delivery})
    world = World(
        rng=rng,
        config=config,
        engine=engine,
        backend=backend,
        stub=stub,
        smtp=smtp,
        app_name=f"nl-model-{os.getpid()}-{seed}",
        issue=issue_path,
    )
    try:
        _start(world)
        for _ in range(18):
            _step(world)
        _finish(world)
        received = Counter(world.received())
        story = "\n".join(world.log)
        assert set(received) == set(emails), f"seed {seed}: lost {set(emails) - set(received)}\n{story}"
        twice = {e for e, n in received.items() if n > 1}
        assert twice <= world.resent, f"seed {seed}: unreported copies to {sorted(twice - world.resent)[:5]}\n{story}"
        counts = ledger.counts(engine, ledger.get_send(engine, SLUG).id)  # type: ignore[union-attr]
        assert counts.settled and counts.sent + counts.rejected == SUBSCRIBERS, f"{counts}\n{story}"
    finally:
        for proc in world.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
        if stub is not None:
            stub.close()
        if smtp is not None:
            smtp.stop()
