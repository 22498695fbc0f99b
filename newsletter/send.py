"""The send job: render the issue once, freeze the audience in the ledger, then claim
batches, personalize late and hand them to the configured ``Sender`` with bounded
concurrency, retries with backoff, and a ledger entry before and after every request.
The issue file is marked sent only when every ledger row is settled.

Also the editors' test send (no ledger, ``[TEST]`` subject) and approval.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import Engine

from newsletter import issuefile, links, render
from newsletter.config import Settings
from newsletter.errors import BuildError, DeliveryError, PermanentDeliveryError, SendError
from newsletter.models import Issue, Recipient
from newsletter.senders.base import Batch, Delivery, Sender
from newsletter.store import ledger

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (settled so far, audience)
BACKOFF_BASE = 1.0  # seconds; doubled per attempt, with jitter
BACKOFF_CAP = 300.0


@dataclass
class SendSummary:
    """What a send run did and what is left; ``complete`` when every row is settled."""

    issue: str
    audience: int
    sent: int = 0
    skipped: int = 0
    rejected: int = 0
    pending: int = 0
    ambiguous: int = 0
    sent_this_run: int = 0
    already_complete: bool = False
    stopped: str | None = None  # why the run stopped early
    ambiguous_batches: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.pending == 0 and self.ambiguous == 0

    @property
    def unsent(self) -> int:
        return self.pending + self.ambiguous


def backoff(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): what the service asked for,
    or exponential backoff with full jitter, capped."""
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, BACKOFF_CAP) + rng.uniform(0, 1)
    return rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt))


def approve(path: Path, now: dt.datetime | None = None) -> Issue:
    """Mark a draft approved (the send job sends approved issues)."""
    issue = issuefile.load(path)
    if issue.status == "sent":
        raise SendError(f"{path}: already sent")
    approved = issue.model_copy(update={"status": "approved",
                                        "approved_at": now or dt.datetime.now(dt.timezone.utc)})
    issuefile.save(approved, path)
    return approved


def _build(issue: Issue, path: Path, settings: Settings) -> render.RenderedEmail:
    built = render.build_issue(issue, settings)
    if built.errors:
        more = f" (and {len(built.errors) - 1} more)" if len(built.errors) > 1 else ""
        raise BuildError(f"{path}: not sending: {built.errors[0]}{more}")
    return built.email


def send_test(settings: Settings, path: Path, recipients: list[str] | None = None,
              sender: Sender | None = None) -> list[str]:
    """Send the issue to the editors (``delivery.test_recipients``) with a ``[TEST]``
    subject; no ledger, no change to the issue. Returns the addresses sent to."""
    from newsletter.senders import make_sender

    addresses = recipients or settings.delivery.test_recipients
    if not addresses:
        raise SendError("no test recipients: set delivery.test_recipients in the config or name them")
    issue = issuefile.load(path)
    email = _build(issue, path, settings)
    email = replace(email, subject=f"[TEST] {email.subject}")
    own = sender is None
    sender = sender or make_sender(settings)
    try:
        deliveries = [
            Delivery(key=n, recipient=Recipient(email=a, name="", unsubscribe_url=links.unsubscribe(
                settings.publication, render.SAMPLE_RECIPIENT_TOKEN)))
            for n, a in enumerate(addresses)
        ]
        result = sender.send(Batch(issue=f"{issue.slug}-test", batch_id=ledger.new_batch_id(), email=email,
                                   deliveries=deliveries))
    finally:
        if own:
            sender.close()
    if result.rejected or result.retry:
        reasons = {**result.rejected, **result.retry}
        raise DeliveryError(f"test send failed for {addresses[next(iter(reasons))]}: {next(iter(reasons.values()))}")
    return [addresses[k] for k in result.sent]


class _Run:
    """One process's pass over a send: workers claim and deliver batches until done."""

    def __init__(self, engine: Engine, send: ledger.Send, email: render.RenderedEmail, settings: Settings,
                 sender: Sender, progress: Progress | None, sleep: Callable[[float], object],
                 rng: random.Random) -> None:
        self.engine, self.send, self.email, self.settings = engine, send, email, settings
        self.sender, self.progress, self.sleep, self.rng = sender, progress, sleep, rng
        self.batch_size = max(1, sender.max_batch_size)
        self.max_retries = settings.delivery.max_retries
        self.stop = threading.Event()
        self.stopped: str | None = None
        self.lock = threading.Lock()
        self.sent_this_run = 0
        self.settled_this_run = 0

    def halt(self, reason: str) -> None:
        with self.lock:
            if self.stopped is None:
                self.stopped = reason
        self.stop.set()

    def worker(self) -> None:
        while not self.stop.is_set():
            batch_id = ledger.new_batch_id()
            claimed, skipped = ledger.claim_batch(self.engine, self.send.id, self.batch_size, batch_id)
            if skipped:
                self._advance(skipped, 0)
            if not claimed:
                if not skipped:
                    return
                continue
            self._deliver(batch_id, claimed)

    def _deliver(self, batch_id: str, claimed: list[ledger.Claimed]) -> None:
        pub = self.settings.publication
        waiting = {c.key: Delivery(key=c.key, recipient=Recipient(
            email=c.email, name=c.name, unsubscribe_url=links.unsubscribe(pub, c.token))) for c in claimed}
        attempt = 0
        while waiting:
            batch = Batch(issue=self.send.issue, batch_id=batch_id, email=self.email,
                          deliveries=list(waiting.values()))
            try:
                result = self.sender.send(batch)
            except PermanentDeliveryError as exc:
                ledger.release(self.engine, waiting, str(exc))  # refused: nothing was delivered
                self.halt(str(exc))
                return
            except DeliveryError as exc:
                attempt += 1
                if attempt > self.max_retries or self.stop.is_set():
                    ledger.release(self.engine, waiting, str(exc))
                    self.halt(f"{exc} (gave up after {attempt} attempts; run the send again to resume)")
                    return
                delay = backoff(attempt, exc.retry_after, self.rng)
                log.warning("batch %s: %s; retry %d/%d in %.1f s", batch_id, exc, attempt, self.max_retries, delay)
                self.sleep(delay)
                continue
            whole = len(result.sent) == len(waiting) and attempt == 0
            ledger.mark_sent(self.engine, result.sent, result.message_id, batch_id=batch_id if whole else None)
            ledger.mark_rejected(self.engine, result.rejected)
            self._advance(len(result.sent) + len(result.rejected), len(result.sent))
            waiting = {k: waiting[k] for k in result.retry if k in waiting}
            if waiting:
                attempt += 1
                reason = next(iter(result.retry.values()))
                if attempt > self.max_retries or self.stop.is_set():
                    ledger.release(self.engine, waiting, reason)
                    self.halt(f"{len(waiting)} recipients not accepted: {reason} (run the send again to resume)")
                    return
                self.sleep(backoff(attempt, None, self.rng))

    def _advance(self, settled: int, sent: int) -> None:
        with self.lock:
            self.settled_this_run += settled
            self.sent_this_run += sent
            done = self.settled_this_run
        if self.progress:
            self.progress(done, self.send.audience)

    def run(self, concurrency: int) -> None:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="send") as pool:
            futures = [pool.submit(self.worker) for _ in range(concurrency)]
            try:
                for future in futures:
                    while True:
                        try:
                            future.result(timeout=0.5)  # wake up for Ctrl-C
                            break
                        except TimeoutError:
                            continue
            except KeyboardInterrupt:
                self.halt("interrupted: batches in flight were allowed to finish")
                for future in futures:
                    future.exception()
            except BaseException as exc:
                self.halt(f"{type(exc).__name__}: {exc}")
                raise


def send_issue(
    settings: Settings,
    path: Path,
    *,
    engine: Engine | None = None,
    sender: Sender | None = None,
    progress: Progress | None = None,
    allow_draft: bool = False,
    sleep: Callable[[float], object] = time.sleep,
    rng: random.Random | None = None,
) -> SendSummary:
    """Send the issue at ``path`` to every active subscriber, exactly once; resumable."""
    from newsletter.senders import make_sender
    from newsletter.store.db import open_database

    issue = issuefile.load(path)
    engine = engine or open_database(settings)
    existing = ledger.get_send(engine, issue.slug)
    if issue.status == "draft" and not allow_draft and existing is None:
        raise SendError(f"{path}: is a draft; approve it first (`newsletter approve {path}`)")
    if issue.status == "sent" and (existing is None or existing.finished_at is not None):
        summary = _summary(engine, existing, issue.slug) if existing else SendSummary(issue.slug, 0)
        summary.already_complete = True
        return summary
    email = _build(issue, path, settings)
    send, _created = ledger.start_send(engine, issue.slug, issue.subject)
    own_sender = sender is None
    sender = sender or make_sender(settings)
    run = _Run(engine, send, email, settings, sender, progress, sleep, rng or random.Random())
    try:
        run.run(settings.delivery.concurrency)
    finally:
        if own_sender:
            sender.close()
    summary = _summary(engine, send, issue.slug)
    summary.sent_this_run = run.sent_this_run
    summary.stopped = run.stopped
    if summary.complete and ledger.finish_send(engine, send.id):
        current = issuefile.load(path)
        if current.status != "sent":
            issuefile.save(current.model_copy(update={
                "status": "sent", "sent_at": dt.datetime.now(dt.timezone.utc)}), path)
    return summary


def _summary(engine: Engine, send: ledger.Send, slug: str) -> SendSummary:
    counts = ledger.counts(engine, send.id)
    batches = ledger.in_flight_batches(engine, send.id)
    return SendSummary(
        issue=slug, audience=send.audience, sent=counts.sent, skipped=counts.skipped,
        rejected=counts.rejected, pending=counts.pending, ambiguous=counts.in_flight,
        ambiguous_batches=[b for b, _n, _at in batches],
    )


def settle(settings: Settings, path: Path, as_state: str, engine: Engine | None = None) -> int:
    """Settle a send's ambiguous (in-flight) rows as ``sent`` or ``pending`` (resend)."""
    from newsletter.store.db import open_database

    issue = issuefile.load(path)
    engine = engine or open_database(settings)
    send = ledger.get_send(engine, issue.slug)
    if send is None:
        raise SendError(f"{path}: has not been sent; nothing to settle")
    return ledger.settle_ambiguous(engine, send.id, as_state)
