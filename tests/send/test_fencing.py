"""Faults real deployments meet, against real `newsletter send` processes: a sender paused
(SIGSTOP) past its lease while an operator settles and resends its batches, a ledger
write that fails (a database trigger; a full disk), rows left in flight in a closed batch
by older code, a database that goes away mid-send (a terminated connection; a restarted
cluster). Counted from what the SendGrid stand-in received: nobody gets a copy the ledger
did not report, and nothing is left that the operator cannot see and settle."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from newsletter.store import ledger
from newsletter.store.db import create_store_engine, upgrade
from tests.helpers.pgcluster import PgCluster
from tests.senders.conftest import Reply, SendgridStub

from .conftest import bulk_subscribers
from .test_crash import SLUG, rows_in, run_send, sendgrid_config, start_send

pytestmark = pytest.mark.slow


def wait_for(condition, timeout: float = 60.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def orphans(engine: Engine) -> int:
    """Rows in flight in a batch that is not: what nothing could ever settle."""
    with engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT count(*) FROM deliveries d JOIN send_batches b ON b.batch_id = d.batch_id "
                "WHERE d.state = 'in_flight' AND b.state <> 'in_flight'"
            ).scalar_one()
        )


def counts(engine: Engine) -> ledger.Counts:
    send = ledger.get_send(engine, SLUG)
    assert send is not None
    return ledger.counts(engine, send.id)


# --- 1. a paused sender ---------------------------------------------------------------


def test_a_sender_paused_past_its_lease_sends_nothing_after_an_operator_resent_its_batches(
    write_config, database_url, engine, issue_path, sendgrid_sink: SendgridStub
) -> None:
    """Four batches sleep in a 503 backoff; the process is paused past its lease; the
    operator follows the README (status, reconcile, settle-ambiguous resend), which sends
    them; the paused process resumes and must not post its batches again."""
    emails = bulk_subscribers(engine, 200)
    config = sendgrid_config(write_config, database_url, sendgrid_sink, concurrency=4, lease_seconds=2, max_retries=5)
    busy = Reply(status=503, headers={"Retry-After": "3"}, body=b"busy")
    sendgrid_sink.queue(busy, busy, busy, busy)
    paused = start_send(config, issue_path)
    try:
        wait_for(lambda: sendgrid_sink.count >= 4, what="four requests")
        time.sleep(0.3)  # the answers arrive; the workers go to sleep in their backoff
        paused.send_signal(signal.SIGSTOP)
        time.sleep(3.5)  # past the lease
        code, output = run_send(config, issue_path, "--status")
        assert code == 0 and "lease expired" in output, output
        code, output = run_send(config, issue_path, "--reconcile")
        assert code == 1 and "still ambiguous: 200" in output, output
        code, output = run_send(config, issue_path, "--settle-ambiguous", "resend")
        assert code == 0 and "sent 200 of 200" in output, output
        assert sorted(sendgrid_sink.received) == sorted(emails)
    finally:
        paused.send_signal(signal.SIGCONT)
    output, _ = paused.communicate(timeout=120)
    received = Counter(sendgrid_sink.received)
    assert max(received.values()) == 1, f"duplicates after the paused sender resumed: {output}"
    assert paused.returncode == 1, output
    assert "taken over" in output, output
    assert counts(engine).sent == 200 and orphans(engine) == 0


# --- 2. a ledger write that fails -------------------------------------------------------


def _fail_settles_after(engine: Engine, sent: int) -> None:
    """A trigger that refuses to mark rows sent once ``sent`` rows are (a write fails, as
    on a full disk), on either engine."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_settle BEFORE UPDATE OF state ON deliveries "
                f"WHEN NEW.state = 'sent' AND (SELECT count(*) FROM deliveries WHERE state = 'sent') >= {sent:d} "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_settle() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF (SELECT count(*) FROM deliveries WHERE state = 'sent') >= {sent:d} THEN "
                "RAISE EXCEPTION 'could not extend file: No space left on device'; END IF; RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_settle BEFORE UPDATE OF state ON deliveries FOR EACH ROW "
                "WHEN (NEW.state = 'sent') EXECUTE FUNCTION refuse_settle()"
            )


def _drop_trigger(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER refuse_settle")
        else:
            conn.exec_driver_sql("DROP TRIGGER refuse_settle ON deliveries")
            conn.exec_driver_sql("DROP FUNCTION refuse_settle()")


def test_a_failed_settle_leaves_its_batch_open_to_expire_into_reported_ambiguity(
    write_config, database_url, engine, issue_path, sendgrid_sink: SendgridStub
) -> None:
    emails = bulk_subscribers(engine, 400)
    config = sendgrid_config(write_config, database_url, sendgrid_sink, concurrency=2)
    _fail_settles_after(engine, 100)
    code, output = run_send(config, issue_path)
    assert code == 1, output
    assert "not recorded" in output and "ledger could not be written" in output, output
    # Nothing is in flight in a closed batch: the batches whose settle failed stay open
    # (the old code closed them, and their rows could never be settled).
    assert orphans(engine) == 0
    assert counts(engine).in_flight > 0
    _drop_trigger(engine)
    # Their process is gone: the next look reports them ambiguous, and they can be settled.
    code, output = run_send(config, issue_path, "--status")
    assert code == 0 and "its process is gone" in output, output
    code, output = run_send(config, issue_path, "--reconcile")
    assert code == 1, output
    c = counts(engine)
    assert c.in_flight == 0 and c.ambiguous > 0
    accepted = set(sendgrid_sink.received)
    assert {r.email for r in rows_in(engine, ledger.get_send(engine, SLUG).id, "ambiguous")} <= accepted  # type: ignore[union-attr]
    # The operator checked SendGrid's activity log: they arrived.
    code, output = run_send(config, issue_path, "--settle-ambiguous", "sent")
    assert code == 0, output
    code, output = run_send(config, issue_path)
    assert code == 0 and "sent 400 of 400" in output, output
    assert Counter(sendgrid_sink.received) == Counter(emails)


def test_rows_left_in_flight_in_a_closed_batch_are_found_and_reported(
    write_config, database_url, engine, issue_path, sendgrid_sink: SendgridStub
) -> None:
    """What older code left behind (a batch closed over rows still in flight): the sweep
    of ``--status`` makes them ambiguous, so they can be settled and the issue finish."""
    bulk_subscribers(engine, 120)
    config = sendgrid_config(write_config, database_url, sendgrid_sink)
    code, output = run_send(config, issue_path)
    assert code == 0, output
    send = ledger.get_send(engine, SLUG)
    assert send is not None
    with engine.begin() as conn:  # as the old worker's `finally: finish_batch` left them
        batch_id = conn.exec_driver_sql(
            f"SELECT batch_id FROM deliveries WHERE send_id = {send.id:d} ORDER BY id LIMIT 1"
        ).scalar_one()
        conn.execute(
            sa.text("UPDATE deliveries SET state = 'in_flight', settled_at = NULL WHERE batch_id = :b"),
            {"b": batch_id},
        )
        conn.execute(sa.text("UPDATE sends SET finished_at = NULL WHERE id = :s"), {"s": send.id})
    assert orphans(engine) == 50
    code, output = run_send(config, issue_path, "--status")
    assert code == 0 and "in flight 0" in output and "ambiguous 50" in output, output
    assert orphans(engine) == 0
    code, output = run_send(config, issue_path, "--settle-ambiguous", "sent", "--batch", batch_id)
    assert code == 0 and "settled 50" in output, output
    assert ledger.get_send(engine, SLUG).finished_at is not None  # type: ignore[union-attr]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs of the test's own (root can mount one here); skipped elsewhere."""
    where = tmp_path / "disk"
    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(where)], capture_output=True)
    if made.returncode != 0:
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(f"cannot mount a tmpfs: {made.stderr.decode().strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_half_way_through_a_send_loses_nothing(
    write_config, sqlite_template, issue_path, small_disk: Path
) -> None:
    """The SQLite database on a small disk, filled by another file half-way through the
    send: the run stops with the batches it could not record named; once the disk has
    room, the operator's commands finish the issue with nobody sent twice."""
    stub = SendgridStub(delay=0.03)
    stub.thread.start()
    try:
        path = small_disk / "newsletter.db"
        shutil.copy(sqlite_template, path)
        url = f"sqlite:///{path}"
        engine = create_store_engine(url)
        upgrade(engine)
        emails = bulk_subscribers(engine, 3000)
        config = sendgrid_config(write_config, url, stub, database={"retry_seconds": 1})
        proc = start_send(config, issue_path)
        wait_for(lambda: stub.count >= 10, what="ten requests")
        filler = small_disk / "filler"
        with filler.open("wb") as out:  # every byte the disk has left
            try:
                while True:
                    out.write(b"\0" * 65536)
            except OSError:
                pass
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1, output
        assert "disk is full" in output, output
        filler.unlink()
        assert orphans(engine) == 0
        code, output = run_send(config, issue_path, "--reconcile")
        c = counts(engine)
        assert c.in_flight == 0, output
        # The ambiguous rows (recorded nowhere: accepted or not) were checked in SendGrid's
        # activity log; those it has are settled as sent, per batch, the rest resent.
        send = ledger.get_send(engine, SLUG)
        assert send is not None
        accepted = set(stub.received)
        for info in ledger.batches(engine, send.id, "ambiguous"):
            rows = [r for r in rows_in(engine, send.id, "ambiguous") if r.batch_id == info.batch_id]
            arrived = {r.email in accepted for r in rows}
            assert len(arrived) == 1  # a request arrives whole or not at all
            decision = "sent" if arrived.pop() else "resend"
            code, output = run_send(config, issue_path, "--settle-ambiguous", decision, "--batch", info.batch_id)
            assert code in (0, 1), output
        code, output = run_send(config, issue_path)
        assert code == 0 and "sent 3,000 of 3,000" in output, output
        assert Counter(stub.received) == Counter(emails)
        engine.dispose()
    finally:
        stub.close()


# --- 5. the database goes away mid-send --------------------------------------------------


def test_a_terminated_database_connection_mid_send_is_ridden_through(
    write_config, database_url, engine, issue_path, sendgrid_sink: SendgridStub
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("pg_terminate_backend is PostgreSQL's")
    emails = bulk_subscribers(engine, 2000)
    config = sendgrid_config(write_config, database_url, sendgrid_sink)
    name = f"nl-send-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "PGAPPNAME": name}
    proc = start_send(config, issue_path, env=env)
    killed = 0
    for _ in range(3):
        wait_for(lambda n=sendgrid_sink.count: sendgrid_sink.count >= n + 5 or proc.poll() is not None)
        with engine.connect() as conn:
            killed += int(
                conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :n"
                    ),
                    {"n": name},
                ).scalar_one()
            )
    output, _ = proc.communicate(timeout=120)
    assert killed >= 1, "no connection of the sender was terminated"
    assert proc.returncode == 0, output
    assert "sent 2,000 of 2,000" in output and "ambiguous 0" in output, output
    assert Counter(sendgrid_sink.received) == Counter(emails)


def test_a_database_restart_mid_send_is_ridden_through(write_config, issue_path, pg_cluster: PgCluster) -> None:
    """The suite's own throw-away cluster stopped for two seconds while a send runs: the
    run waits for it (database.retry_seconds) and finishes, with no row ambiguous."""
    database = f"nl_{os.getpid()}_{time.monotonic_ns()}"
    admin = sa.create_engine(pg_cluster.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
    admin.dispose()
    url = pg_cluster.url.rsplit("/", 1)[0] + f"/{database}"
    engine = create_store_engine(url)
    upgrade(engine)
    emails = bulk_subscribers(engine, 3000)
    engine.dispose()
    sendgrid_sink_delay = SendgridStub(delay=0.03)
    sendgrid_sink_delay.thread.start()
    try:
        config = sendgrid_config(write_config, url, sendgrid_sink_delay, database={"retry_seconds": 30})
        proc = start_send(config, issue_path)
        wait_for(lambda: sendgrid_sink_delay.count >= 10, what="ten requests")
        pg_cluster.restart(down_seconds=2.0)
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, output
        assert "sent 3,000 of 3,000" in output and "ambiguous 0" in output, output
        assert Counter(sendgrid_sink_delay.received) == Counter(emails)
    finally:
        sendgrid_sink_delay.close()


# --- 7. reconcile's exit code ----------------------------------------------------------------


def test_reconcile_exits_1_while_recipients_are_pending(
    write_config, database_url, engine, issue_path, sendgrid_sink: SendgridStub
) -> None:
    bulk_subscribers(engine, 100)
    config = sendgrid_config(write_config, database_url, sendgrid_sink, concurrency=1)
    sendgrid_sink.queue(Reply(status=401, body=b"unauthorized"))
    code, output = run_send(config, issue_path)
    assert code == 1, output
    assert counts(engine).pending == 100
    code, output = run_send(config, issue_path, "--reconcile")
    assert code == 1 and "100 pending" in output, output
