"""The send job on SQLite and PostgreSQL: every active subscriber exactly once, batches,
retries, permanent errors, skips, ambiguous batches after a crash, resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine

from newsletter import issuefile, send
from newsletter.config import Settings
from newsletter.errors import BuildError, DeliveryError, PermanentDeliveryError, SendError
from newsletter.senders.memory import MemorySender
from newsletter.store import ledger, subscribers

from .conftest import add_subscribers, claim_as_dead


def _run(settings: Settings, path: Path, engine: Engine, sender: MemorySender, **kw) -> send.SendSummary:
    sleeps: list[float] = kw.pop("sleeps", [])
    return send.send_issue(settings, path, engine=engine, sender=sender, sleep=sleeps.append, **kw)


def test_every_active_subscriber_gets_exactly_one_message(db_settings, issue_path, engine) -> None:
    emails = add_subscribers(engine, 7)
    add_subscribers(engine, 2, status="unsubscribed", prefix="gone")
    add_subscribers(engine, 1, status="bounced", prefix="bounced")
    sender = MemorySender(max_batch_size=3)
    summary = _run(db_settings, issue_path, engine, sender)
    assert summary.complete and summary.sent == 7 and summary.audience == 7
    assert sorted(a for _i, a in sender.delivered) == sorted(emails)
    assert all(len(b.deliveries) <= 3 for b in sender.batches)
    assert issuefile.load(issue_path).status == "sent"
    assert issuefile.load(issue_path).sent_at is not None
    # per-recipient unsubscribe URLs carry each subscriber's own token
    for batch in sender.batches:
        for d in batch.deliveries:
            token = subscribers.get(engine, d.recipient.email).token
            assert d.recipient.unsubscribe_url == f"http://127.0.0.1:8000/unsubscribe/{token}"


def test_running_again_sends_nothing(db_settings, issue_path, engine) -> None:
    add_subscribers(engine, 3)
    _run(db_settings, issue_path, engine, MemorySender())
    again = MemorySender()
    summary = _run(db_settings, issue_path, engine, again)
    assert summary.already_complete and not again.batches


def test_audience_is_frozen_at_the_start(db_settings, issue_path, engine) -> None:
    add_subscribers(engine, 4)
    first = MemorySender(max_batch_size=2)
    first.fail(2, PermanentDeliveryError("401 unauthorized"))
    summary = _run(db_settings, issue_path, engine, first)
    assert summary.stopped == "401 unauthorized" and summary.sent == 2 and summary.pending == 2
    add_subscribers(engine, 3, prefix="late")  # joined after the send started
    second = MemorySender(max_batch_size=2)
    summary = _run(db_settings, issue_path, engine, second)
    assert summary.complete and summary.sent == 4
    assert not [a for _i, a in second.delivered if a.startswith("late")]


def test_unsubscribed_after_freezing_is_skipped(db_settings, issue_path, engine) -> None:
    emails = add_subscribers(engine, 4)
    sender = MemorySender(max_batch_size=2)
    for call in (1, 2):  # both workers' first batches are refused: nothing is sent
        sender.fail(call, PermanentDeliveryError("stop"))
    _run(db_settings, issue_path, engine, sender)  # freezes, sends nothing
    assert not sender.batches
    subscribers.unsubscribe(engine, emails[3])
    subscribers.remove(engine, emails[2])  # erased: personal data gone
    resumed = MemorySender(max_batch_size=2)
    summary = _run(db_settings, issue_path, engine, resumed)
    assert summary.complete and summary.sent == 2 and summary.skipped == 2
    assert sorted(a for _i, a in resumed.delivered) == sorted(emails[:2])


def test_permanent_error_stops_and_resume_sends_the_rest_once(db_settings, issue_path, engine) -> None:
    emails = add_subscribers(engine, 10)
    sender = MemorySender(max_batch_size=2)
    sender.fail(3, PermanentDeliveryError("413 payload too large"))
    summary = _run(db_settings, issue_path, engine, sender)
    assert not summary.complete and summary.stopped == "413 payload too large"
    assert summary.ambiguous == 0  # refused requests delivered nothing: back to pending
    assert issuefile.load(issue_path).status == "approved"
    resumed = MemorySender(max_batch_size=2)
    summary = _run(db_settings, issue_path, engine, resumed)
    assert summary.complete
    everyone = Counter(a for _i, a in sender.delivered + resumed.delivered)
    assert sorted(everyone) == sorted(emails) and set(everyone.values()) == {1}


def test_transient_errors_are_retried_with_backoff(db_settings, issue_path, engine) -> None:
    add_subscribers(engine, 2)
    sender = MemorySender(max_batch_size=2)
    sender.fail(1, DeliveryError("429 too many requests", retry_after=7))
    sender.fail(2, DeliveryError("503 unavailable"))
    sleeps: list[float] = []
    summary = _run(db_settings, issue_path, engine, sender, sleeps=sleeps)
    assert summary.complete and summary.sent == 2
    assert len(sleeps) == 2
    assert 7 <= sleeps[0] <= 8  # honours Retry-After (plus jitter)
    assert 0 <= sleeps[1] <= 4  # exponential backoff with full jitter


def test_retries_give_up_and_leave_the_send_resumable(db_settings, issue_path, engine) -> None:
    add_subscribers(engine, 2)
    sender = MemorySender(max_batch_size=2)
    for call in range(1, 10):
        sender.fail(call, DeliveryError("connection refused"))
    summary = _run(db_settings, issue_path, engine, sender)
    assert not summary.complete and summary.pending == 2 and summary.ambiguous == 0
    assert "gave up after 4 attempts" in (summary.stopped or "")
    summary = _run(db_settings, issue_path, engine, MemorySender())
    assert summary.complete and summary.sent == 2


def test_per_recipient_rejection_and_retry(db_settings, issue_path, engine) -> None:
    emails = add_subscribers(engine, 3)
    sender = MemorySender(reject={emails[0]: "550 no such user"}, retry={emails[1]: "451 try later"})
    summary = _run(db_settings, issue_path, engine, sender)
    assert summary.rejected == 1 and summary.sent == 1 and summary.pending == 1
    assert "451 try later" in (summary.stopped or "")
    summary = _run(db_settings, issue_path, engine, MemorySender())
    assert summary.complete and summary.sent == 2 and summary.rejected == 1


def test_batch_in_flight_when_a_process_died_is_ambiguous(db_settings, issue_path, engine) -> None:
    emails = add_subscribers(engine, 5)
    # A process that froze the audience, claimed a batch and died before the answer:
    sent, _ = ledger.start_send(engine, "2024-10-25", issuefile.load(issue_path).subject)
    claimed = claim_as_dead(engine, sent.id, 2, "dead-batch")
    sender = MemorySender()
    summary = _run(db_settings, issue_path, engine, sender)
    assert summary.sent == 3 and summary.ambiguous == 2
    assert [b.batch_id for b in summary.ambiguous_batches] == ["dead-batch"]
    assert "stopped before the provider's answer came" in (summary.ambiguous_batches[0].reason or "")
    assert not summary.complete
    assert {c.email for c in claimed}.isdisjoint(a for _i, a in sender.delivered)  # never resent silently
    assert issuefile.load(issue_path).status == "approved"  # not every row settled
    # The operator checked the provider's log: the batch never arrived; send it again.
    assert send.settle(db_settings, issue_path, "pending", engine=engine).settled == 2
    again = MemorySender()
    summary = _run(db_settings, issue_path, engine, again)
    assert summary.complete and sorted(a for _i, a in again.delivered) == sorted(c.email for c in claimed)
    assert issuefile.load(issue_path).status == "sent"
    assert sorted(a for _i, a in sender.delivered + again.delivered) == sorted(emails)


def test_settling_ambiguous_as_sent_finishes_the_issue(db_settings, issue_path, engine) -> None:
    add_subscribers(engine, 3)
    sent, _ = ledger.start_send(engine, "2024-10-25", issuefile.load(issue_path).subject)
    claim_as_dead(engine, sent.id, 3, "dead-batch")
    assert not _run(db_settings, issue_path, engine, MemorySender()).complete
    assert send.settle(db_settings, issue_path, "sent", engine=engine).settled == 3
    summary = _run(db_settings, issue_path, engine, MemorySender())
    assert summary.complete and summary.sent == 3
    assert issuefile.load(issue_path).status == "sent"


def test_a_draft_is_not_sent_unless_allowed(db_settings, project, engine) -> None:
    add_subscribers(engine, 1)
    path = project / "issues/2024-10-25.yaml"
    with pytest.raises(SendError, match="is a draft; approve it first"):
        _run(db_settings, path, engine, MemorySender())
    assert ledger.get_send(engine, "2024-10-25") is None
    assert _run(db_settings, path, engine, MemorySender(), allow_draft=True).complete


def test_build_errors_refuse_to_send(db_settings, issue_path, engine, project) -> None:
    add_subscribers(engine, 1)
    (project / "templates/partials/footer.mjml.j2").write_text(
        "<mj-section><mj-column><mj-text>bye</mj-text></mj-column></mj-section>", encoding="utf-8"
    )
    sender = MemorySender()
    with pytest.raises(BuildError, match="not sending: no unsubscribe link"):
        _run(db_settings, issue_path, engine, sender)
    assert not sender.batches and ledger.get_send(engine, "2024-10-25") is None


def test_approve(project) -> None:
    path = project / "issues/2024-10-25.yaml"
    issue = send.approve(path)
    assert issue.status == "approved" and issuefile.load(path).approved_at is not None


def test_send_test_goes_to_the_editors_only(db_settings, issue_path) -> None:
    sender = MemorySender()
    sent = send.send_test(db_settings, issue_path, sender=sender)
    assert sent == ["editors@news.example.org"]
    assert sender.batches[0].email.subject.startswith("[TEST] ")
    assert issuefile.load(issue_path).status == "approved"


def test_empty_audience_is_refused_and_the_issue_stays_unsent(db_settings, issue_path, engine) -> None:
    with pytest.raises(SendError, match="no active subscribers"):
        _run(db_settings, issue_path, engine, MemorySender())
    assert ledger.get_send(engine, "2024-10-25") is None  # nothing frozen
    assert issuefile.load(issue_path).status == "approved"
    # subscribers who join later get the issue
    emails = add_subscribers(engine, 2)
    sender = MemorySender()
    assert _run(db_settings, issue_path, engine, sender).complete
    assert sorted(a for _i, a in sender.delivered) == sorted(emails)


def test_empty_audience_is_finished_when_allowed(db_settings, issue_path, engine) -> None:
    summary = _run(db_settings, issue_path, engine, MemorySender(), allow_empty=True)
    assert summary.complete and summary.audience == 0
    assert issuefile.load(issue_path).status == "sent"


def test_concurrent_workers_send_each_subscriber_once(db_settings, issue_path, engine) -> None:
    emails = add_subscribers(engine, 60)
    settings = db_settings.model_copy(update={"delivery": db_settings.delivery.model_copy(update={"concurrency": 4})})
    sender = MemorySender(max_batch_size=3)
    summary = _run(settings, issue_path, engine, sender)
    assert summary.complete and summary.sent == 60
    delivered = Counter(a for _i, a in sender.delivered)
    assert sorted(delivered) == sorted(emails) and set(delivered.values()) == {1}
    assert len({b.batch_id for b in sender.batches}) == len(sender.batches) == 20
