"""The send lifecycle with no holes (issue 10): drafts refused at every send, a changed
issue refused after its audience was frozen, the sender checked before the freeze, an
empty audience refused, live batches of another process left alone, ambiguous outcomes
never retried, settled by events, by ``--reconcile`` or by hand, batch by batch; and
the durable "in flight" mark."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine

from newsletter import issuefile, send
from newsletter.config import Settings
from newsletter.errors import AmbiguousDeliveryError, ConfigError, PermanentDeliveryError, SendError
from newsletter.senders.base import Batch, BatchResult
from newsletter.senders.memory import MemorySender
from newsletter.store import batches, db, ledger

from .conftest import add_subscribers, claim_as_dead


def _run(settings: Settings, path: Path, engine: Engine, sender: MemorySender, **kw: object) -> send.SendSummary:
    return send.send_issue(settings, path, engine=engine, sender=sender, sleep=lambda _s: None, **kw)  # type: ignore[arg-type]


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def _stop_after_first_batch() -> MemorySender:
    sender = MemorySender(max_batch_size=2)
    sender.fail(2, PermanentDeliveryError("401 unauthorized"))
    return sender


# --- hole 4: the draft check and the pinned content --------------------------------------


def test_an_issue_set_back_to_draft_is_refused_after_the_send_started(db_settings, issue_path, engine) -> None:
    emails = add_subscribers(engine, 4)
    first = _stop_after_first_batch()
    assert _run(db_settings, issue_path, engine, first).pending == 2
    _edit(issue_path, "\nstatus: approved\n", "\nstatus: draft\n")
    _edit(issue_path, 'subject: "Diplomacy Watch:', 'subject: "UNAPPROVED Diplomacy Watch:')
    late = MemorySender()
    with pytest.raises(SendError, match="is a draft; approve it first"):
        _run(db_settings, issue_path, engine, late)
    assert late.batches == [] and late.checks == 0
    assert sorted(a for _i, a in first.delivered) == sorted(emails[:2])


def test_a_changed_issue_is_refused_with_the_difference_named(db_settings, issue_path, engine) -> None:
    add_subscribers(engine, 4)
    _run(db_settings, issue_path, engine, _stop_after_first_batch())
    _edit(issue_path, 'subject: "Diplomacy Watch:', 'subject: "Changed Diplomacy Watch:')
    late = MemorySender()
    with pytest.raises(SendError) as info:
        _run(db_settings, issue_path, engine, late)
    message = str(info.value)
    assert "changed since its audience was frozen" in message and "--allow-changed" in message
    assert "the subject was 'Diplomacy Watch:" in message and "now 'Changed Diplomacy Watch:" in message
    assert late.batches == []
    # The editors decide the rest get the new version.
    summary = _run(db_settings, issue_path, engine, late, allow_changed=True)
    assert summary.complete and summary.sent == 4
    assert {b.email.subject for b in late.batches} == {issuefile.load(issue_path).subject}


def test_a_changed_body_is_refused(db_settings, issue_path, engine) -> None:
    add_subscribers(engine, 4)
    _run(db_settings, issue_path, engine, _stop_after_first_batch())
    _edit(issue_path, "  Good evening. This week", "  Good evening. A line the editors never approved. This week")
    with pytest.raises(SendError, match="the body \\(HTML or text part\\) or the sender differs"):
        _run(db_settings, issue_path, engine, MemorySender())


def test_approving_a_draft_does_not_count_as_a_change(db_settings, project, engine) -> None:
    add_subscribers(engine, 4)
    path = project / "issues/2024-10-25.yaml"
    _run(db_settings, path, engine, _stop_after_first_batch(), allow_draft=True)
    send.approve(path)
    assert _run(db_settings, path, engine, MemorySender()).complete


# --- hole 5: the sender is checked before the audience is frozen -------------------------


def test_a_sender_that_cannot_send_freezes_nothing(db_settings, issue_path, engine) -> None:
    add_subscribers(engine, 2)
    broken = MemorySender(check_error=PermanentDeliveryError("sendgrid: the API key may not send mail"))
    with pytest.raises(PermanentDeliveryError):
        _run(db_settings, issue_path, engine, broken)
    assert ledger.get_send(engine, "2024-10-25") is None and broken.batches == []
    late = add_subscribers(engine, 1, prefix="late")
    working = MemorySender()
    assert _run(db_settings, issue_path, engine, working).sent == 3
    assert late[0] in [a for _i, a in working.delivered]


def test_a_missing_api_key_freezes_nothing(write_config, database_url, engine, issue_path) -> None:
    from newsletter.config import load_settings

    add_subscribers(engine, 2)
    settings = load_settings(
        write_config({"database": {"url": database_url}, "delivery": {"backend": "sendgrid"}}), env={}
    )
    with pytest.raises(ConfigError, match="SENDGRID_API_KEY"):
        send.send_issue(settings, issue_path, engine=engine)
    assert ledger.get_send(engine, "2024-10-25") is None


# --- hole 3: another process's live batches ----------------------------------------------


def test_a_live_batch_of_another_process_is_waited_for_not_called_ambiguous(db_settings, issue_path, engine) -> None:
    add_subscribers(engine, 5)
    other, _ = ledger.start_send(engine, "2024-10-25", issuefile.load(issue_path).subject)
    claimed, _ = batches.claim_batch(engine, other.id, 2, "theirs", owner="elsewhere:77:alive", lease_seconds=60)
    # An operator who runs --settle-ambiguous now touches nothing: the batch is live.
    assert send.settle(db_settings, issue_path, "pending", engine=engine).settled == 0

    def the_other_process_finishes() -> None:
        theirs = batches.Fence("theirs", "elsewhere:77:alive")
        batches.settle(engine, theirs, batches.Settlement(sent=None, message_id="their-message-id"), close=True)

    timer = threading.Timer(1.0, the_other_process_finishes)
    timer.start()
    sender = MemorySender()
    summary = _run(db_settings, issue_path, engine, sender)
    timer.join()
    assert summary.complete and summary.ambiguous == 0 and summary.sent == 5
    assert {c.email for c in claimed}.isdisjoint(a for _i, a in sender.delivered)
    assert issuefile.load(issue_path).status == "sent"


def test_a_dead_owners_batch_becomes_ambiguous_when_its_lease_runs_out(db_settings, issue_path, engine) -> None:
    add_subscribers(engine, 3)
    other, _ = ledger.start_send(engine, "2024-10-25", issuefile.load(issue_path).subject)
    batches.claim_batch(engine, other.id, 2, "theirs", owner="elsewhere:77:alive", lease_seconds=60)
    now = dt.datetime.now(dt.UTC)
    assert batches.expire_dead_owners(engine, other.id, now) == 0  # live: untouched
    assert batches.renew_leases(engine, "elsewhere:77:alive", 60, now) == ["theirs"]
    assert batches.expire_dead_owners(engine, other.id, now + dt.timedelta(seconds=61)) == 2
    [batch] = ledger.batches(engine, other.id, "ambiguous")
    assert batch.batch_id == "theirs" and batch.state == "expired" and "elsewhere:77:alive" in (batch.reason or "")


# --- ambiguous outcomes: never retried, settled by events, reconcile, or by hand ---------


def _ambiguous_for(addresses: set[str]) -> MemorySender:
    def handler(batch: Batch) -> BatchResult:
        if any(d.recipient.email in addresses for d in batch.deliveries):
            raise AmbiguousDeliveryError("sendgrid: the request was sent but no answer came within 1 s")
        return BatchResult(sent=[d.key for d in batch.deliveries])

    return MemorySender(max_batch_size=2, handler=handler)


def test_an_ambiguous_batch_is_reported_and_never_retried(db_settings, issue_path, engine) -> None:
    emails = add_subscribers(engine, 6)
    sender = _ambiguous_for({emails[2]})
    summary = _run(db_settings, issue_path, engine, sender)
    assert summary.sent == 4 and summary.ambiguous == 2 and not summary.complete
    assert "no answer came within 1 s" in (summary.ambiguous_batches[0].reason or "")
    assert sum(1 for b in sender.batches if any(d.recipient.email == emails[2] for d in b.deliveries)) == 1
    again = MemorySender()
    assert not _run(db_settings, issue_path, engine, again).complete and again.batches == []
    assert issuefile.load(issue_path).status == "approved"


def test_a_run_stops_after_consecutive_ambiguous_batches(db_settings, issue_path, engine) -> None:
    emails = add_subscribers(engine, 12)
    sender = _ambiguous_for(set(emails))
    summary = _run(db_settings, issue_path, engine, sender)
    assert len(sender.batches) == 3 and summary.ambiguous == 6 and summary.pending == 6
    assert "3 batches in a row" in (summary.stopped or "")


def test_reconcile_settles_what_events_prove_and_reports_the_rest(db_settings, issue_path, engine) -> None:
    from newsletter.store import events

    emails = add_subscribers(engine, 4)
    summary = _run(db_settings, issue_path, engine, _ambiguous_for({emails[0], emails[2]}))
    assert summary.ambiguous == 4
    first, second = summary.ambiguous_batches
    rows = _rows(engine, first.batch_id)
    events.apply_events(
        engine,
        [
            {
                "sg_event_id": f"e{key}",
                "event": "delivered",
                "email": email,
                "timestamp": 1730000000,
                "newsletter_batch": first.batch_id,
                "newsletter_delivery": str(key),
            }
            for key, email in rows
        ],
    )
    result = send.reconcile(db_settings, issue_path, engine=engine)
    assert result.settled.total == 0  # the webhook already settled them
    assert [b.batch_id for b in result.waiting] == [second.batch_id] and result.unknown == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=61)
    result = send.reconcile(db_settings, issue_path, engine=engine, now=later)
    assert [b.batch_id for b in result.unknown] == [second.batch_id] and result.remaining == 2
    # The provider's activity log shows the second batch never arrived: send it again.
    lost = sorted(email for _k, email in _rows(engine, second.batch_id))
    assert send.settle(db_settings, issue_path, "pending", batch_id=second.batch_id, engine=engine).settled == 2
    resend = MemorySender()
    assert _run(db_settings, issue_path, engine, resend).complete
    assert sorted(a for _i, a in resend.delivered) == lost


def test_settling_an_unknown_batch_is_a_clear_error(db_settings, issue_path, engine) -> None:
    add_subscribers(engine, 2)
    sent, _ = ledger.start_send(engine, "2024-10-25", issuefile.load(issue_path).subject)
    claim_as_dead(engine, sent.id, 2, "dead-batch")
    # not reported to anyone yet: settling touches nothing
    assert send.settle(db_settings, issue_path, "sent", engine=engine).settled == 0
    assert batches.expire_dead_owners(engine, sent.id) == 2  # as the next send or --reconcile does
    with pytest.raises(SendError, match="no ambiguous recipients in batch 'nope'"):
        send.settle(db_settings, issue_path, "sent", batch_id="nope", engine=engine)
    assert send.settle(db_settings, issue_path, "sent", batch_id="dead-batch", engine=engine).settled == 2
    assert issuefile.load(issue_path).status == "sent"


def _rows(engine: Engine, batch_id: str) -> list[tuple[int, str]]:
    from sqlalchemy import select

    from newsletter.store.tables import deliveries, subscribers

    with engine.connect() as conn:
        return [
            (int(k), str(e))
            for k, e in conn.execute(
                select(deliveries.c.id, subscribers.c.email)
                .select_from(deliveries.join(subscribers, subscribers.c.id == deliveries.c.subscriber_id))
                .where(deliveries.c.batch_id == batch_id)
                .order_by(deliveries.c.id)
            )
        ]


# --- the command line: --status, --reconcile, --settle-ambiguous --batch ----------------


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )


def test_status_and_settle_from_the_command_line(db_settings, issue_path, engine) -> None:
    add_subscribers(engine, 5)
    sent, _ = ledger.start_send(engine, "2024-10-25", issuefile.load(issue_path).subject)
    claim_as_dead(engine, sent.id, 2, "dead-batch")
    batches.claim_batch(engine, sent.id, 1, "live-batch", owner="elsewhere:9:live", lease_seconds=600)
    result = _cli(db_settings.config_path, "send", str(issue_path), "--status")
    assert result.returncode == 0, result.stderr
    assert "pending 2, in flight 3, ambiguous 0" in result.stdout
    assert "batch live-batch, 1 recipients" in result.stdout and "owner elsewhere:9:live (live)" in result.stdout
    assert "batch dead-batch, 2 recipients" in result.stdout and "lease expired: its owner died" in result.stdout
    result = _cli(db_settings.config_path, "send", str(issue_path), "--reconcile")
    assert result.returncode == 1 and "still ambiguous: 2" in result.stdout
    assert "waiting for events (grace 60 min): batch dead-batch" in result.stdout
    result = _cli(
        db_settings.config_path, "send", str(issue_path), "--settle-ambiguous", "sent", "--batch", "dead-batch"
    )
    assert result.returncode == 0 and "settled 2 ambiguous recipients of batch dead-batch as sent" in result.stdout
    result = _cli(db_settings.config_path, "send", str(issue_path), "--batch", "x")
    assert result.returncode == 2 and "only with --settle-ambiguous" in result.stderr


def test_empty_audience_from_the_command_line(db_settings, issue_path) -> None:
    result = _cli(db_settings.config_path, "send", str(issue_path))
    assert result.returncode == 1 and "there are no active subscribers" in result.stderr
    assert "Traceback" not in result.stderr and issuefile.load(issue_path).status == "approved"
    result = _cli(db_settings.config_path, "send", str(issue_path), "--allow-empty")
    assert result.returncode == 0 and "sent 0 of 0" in result.stdout


# --- durability of the in-flight mark ---------------------------------------------------


def test_the_claim_is_written_with_full_sync_on_sqlite(tmp_path: Path) -> None:
    engine = db.create_store_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with db.durable_transaction(engine) as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        with db.write_transaction(engine) as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL elsewhere
    finally:
        engine.dispose()


# --- hole 8: one address SendGrid cannot take does not stop its batch ---------------------


def test_addresses_sendgrid_cannot_take_are_rejected_and_the_rest_go(
    write_config, database_url, engine, issue_path, sendgrid_sink, monkeypatch
) -> None:
    from collections import Counter

    from newsletter.config import load_settings
    from newsletter.store import subscribers

    emails = add_subscribers(engine, 48)
    subscribers.add(engine, "user@bücher.example", status="active")
    subscribers.add(engine, "zoë@example.org", status="active")
    settings = load_settings(
        write_config(
            {
                "database": {"url": database_url},
                "delivery": {
                    "backend": "sendgrid",
                    "concurrency": 1,
                    "max_retries": 1,
                    "sendgrid": {"host": sendgrid_sink.url, "batch_size": 50},
                },
            }
        ),
        env={},
    )
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.test")
    summary = send.send_issue(settings, issue_path, engine=engine, sleep=lambda _s: None)
    assert summary.complete and summary.sent == 49 and summary.rejected == 1
    received = Counter(sendgrid_sink.received)
    assert sorted(received) == sorted([*emails, "user@xn--bcher-kva.example"]) and set(received.values()) == {1}
    rejected = _rejected(engine)
    assert list(rejected) == ["zoë@example.org"] and "non-ASCII local part" in rejected["zoë@example.org"]


def _rejected(engine: Engine) -> dict[str, str]:
    from sqlalchemy import select

    from newsletter.store.tables import deliveries, subscribers

    with engine.connect() as conn:
        return {
            str(e): str(r)
            for e, r in conn.execute(
                select(subscribers.c.email, deliveries.c.error)
                .select_from(deliveries.join(subscribers, subscribers.c.id == deliveries.c.subscriber_id))
                .where(deliveries.c.state == "rejected")
            )
        }


def test_a_permanent_error_stops_every_worker_of_the_run(db_settings, issue_path, engine) -> None:
    add_subscribers(engine, 10)
    settings = db_settings.model_copy(update={"delivery": db_settings.delivery.model_copy(update={"concurrency": 2})})
    sender = MemorySender(max_batch_size=2, fail_on={1: PermanentDeliveryError("401 unauthorized")})
    summary = _run(settings, issue_path, engine, sender)
    assert summary.stopped == "401 unauthorized"
    # the other worker may finish the batch it had already claimed, and no more
    assert len(sender.delivered) <= 2 and summary.pending >= 8
