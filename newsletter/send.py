"""The send job: render the issue once, check the sender, freeze the audience in the
ledger with the email's hash pinned, then claim batches (owned, with a renewed lease),
personalize late and hand them to the configured ``Sender`` with bounded concurrency.
Only failures that prove nothing was accepted are retried (with backoff); a request
that may have arrived makes its rows ambiguous, settled later by the provider's events
(``reconcile``) or by an operator (``settle``). The issue file is marked sent only when
every ledger row is settled.

Also the editors' test send (no ledger, ``[TEST]`` subject), approval, and the
``--status`` report.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from sqlalchemy import Engine

from newsletter import issuefile, links, render, shutdown, tracking
from newsletter.config import Settings
from newsletter.errors import (
    AmbiguousDeliveryError,
    BuildError,
    DeliveryError,
    PermanentDeliveryError,
    SendError,
    StoreError,
)
from newsletter.models import Issue
from newsletter.sendbatch import HeldBatch, Patience
from newsletter.senders.base import Batch, Delivery, Sender
from newsletter.store import batches, ledger
from newsletter.store.batches import Claimed
from newsletter.store.db import database

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
    in_flight: int = 0  # being sent by another live process
    sent_this_run: int = 0
    already_complete: bool = False
    stopped: str | None = None  # why the run stopped early
    interrupted: str | None = None  # the process was asked to stop (SIGTERM, Ctrl-C)
    lost_batches: list[str] = field(default_factory=list)  # taken over from this process
    unrecorded: dict[str, int] = field(default_factory=dict)  # batch -> rows the ledger could not be told
    abandoned: int = 0  # rows given up as ambiguous at the shutdown deadline
    repaired: int = 0  # rows in flight in a closed batch, found by the sweep and made ambiguous
    ambiguous_batches: list[ledger.BatchInfo] = field(default_factory=list)
    reconciled: ledger.Reconciled = field(default_factory=ledger.Reconciled)

    @property
    def complete(self) -> bool:
        return self.pending == 0 and self.ambiguous == 0 and self.in_flight == 0

    @property
    def unsent(self) -> int:
        return self.pending + self.ambiguous + self.in_flight


def backoff(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): what the service asked for,
    or exponential backoff with full jitter, capped."""
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, BACKOFF_CAP) + rng.uniform(0, 1)
    return rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))


def approve(path: Path, now: dt.datetime | None = None) -> Issue:
    """Mark a draft approved (the send job sends approved issues)."""
    issue = issuefile.load(path)
    if issue.status == "sent":
        raise SendError(f"{path}: already sent")
    return issuefile.set_status(path, "approved", approved_at=now or dt.datetime.now(dt.UTC))


def _build(issue: Issue, path: Path, settings: Settings) -> render.RenderedEmail:
    built = render.build_issue(issue, settings)
    if built.errors:
        more = f" (and {len(built.errors) - 1} more)" if len(built.errors) > 1 else ""
        raise BuildError(f"{path}: not sending: {built.errors[0]}{more}")
    return built.email


def _render_check(email: render.RenderedEmail, path: Path, settings: Settings) -> None:
    """The render check in Chromium (``render_check.on_send``): its errors block the send
    like the build's own checks. A report recorded for the same HTML (by ``newsletter
    check`` or ``build``) is reused; without Chromium, ``auto`` logs one line and goes on."""
    from newsletter import rendercheck

    options = settings.render_check
    html, _text = render.personalize_parts(email, render.sample_recipient(settings))
    report = rendercheck.check_html(html, settings.output.dir, options.chromium, options.on_send)
    if report.skipped:
        if options.on_send != "off":
            log.warning("%s: %s", path, report.skipped)
        return
    if report.errors:
        more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise BuildError(f"{path}: not sending: {report.errors[0]}{more}")


def send_test(
    settings: Settings, path: Path, recipients: list[str] | None = None, sender: Sender | None = None
) -> list[str]:
    """Send the issue to the editors (``delivery.test_recipients``) with a ``[TEST]``
    subject; no ledger, no change to the issue. Returns the addresses sent to."""
    from newsletter.senders import sender_for

    addresses = recipients or settings.delivery.test_recipients
    if not addresses:
        raise SendError("no test recipients: set delivery.test_recipients in the config or name them")
    issue = issuefile.load(path)
    email = _build(issue, path, settings)
    email = replace(email, subject=f"[TEST] {email.subject}")
    deliveries = [
        Delivery(
            key=n,
            recipient=links.recipient(settings.publication, a, "", render.SAMPLE_RECIPIENT_TOKEN),
        )
        for n, a in enumerate(addresses)
    ]
    with sender_for(settings, sender) as backend:
        result = backend.send(
            Batch(issue=f"{issue.slug}-test", batch_id=batches.new_batch_id(), email=email, deliveries=deliveries)
        )
    if result.rejected or result.retry or result.ambiguous:
        reasons = {**result.rejected, **result.retry, **result.ambiguous}
        raise DeliveryError(f"test send failed for {addresses[next(iter(reasons))]}: {next(iter(reasons.values()))}")
    return [addresses[k] for k in result.sent]


def content_hash(email: render.RenderedEmail) -> str:
    """What must not change once an audience is frozen, apart from the subject (compared
    on its own, so a refusal can name it): the sender and both parts, as rendered."""
    digest = hashlib.sha256()
    for part in (email.from_name, email.from_address, email.reply_to or "", email.html, email.text):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def _changes(send: ledger.Send, email: render.RenderedEmail, pinned: str) -> list[str]:
    """How the email differs from what was pinned when the audience was frozen."""
    changed = []
    if send.subject != email.subject:
        changed.append(f"the subject was {send.subject!r}, now {email.subject!r}")
    if send.content_hash is not None and send.content_hash != pinned:
        changed.append("the body (HTML or text part) or the sender differs")
    return changed


class _Run:
    """One process's pass over a send: workers claim and deliver batches until none is
    pending, while a heartbeat renews the leases of the batches this process holds; then
    it waits for batches other live processes are sending. Every request and ledger
    write of a batch is fenced (see ``sendbatch.HeldBatch``); every wait wakes when the
    run stops; a stop request (SIGTERM, Ctrl-C) sends no new request and gives requests
    already out ``delivery.shutdown_seconds`` to answer before their batches are given up
    as ambiguous."""

    def __init__(
        self,
        engine: Engine,
        send: ledger.Send,
        email: render.RenderedEmail,
        settings: Settings,
        sender: Sender,
        progress: Progress | None,
        sleep: Callable[[float], object] | None,
        rng: random.Random,
    ) -> None:
        self.engine, self.send, self.email, self.settings = engine, send, email, settings
        self.sender, self.progress, self.sleep, self.rng = sender, progress, sleep, rng
        delivery = settings.delivery
        self.batch_size = max(1, sender.max_batch_size)
        self.max_retries = delivery.max_retries
        self.lease = delivery.lease_seconds
        self.max_ambiguous = delivery.max_ambiguous_batches
        self.shutdown_seconds = delivery.shutdown_seconds
        self.patience = Patience(settings.database.retry_seconds, rng=rng)
        self.owner = batches.new_owner()
        self.stop = threading.Event()
        self.stopped: str | None = None
        self.interrupted: str | None = None  # why the process was asked to stop
        self.deadline: float | None = None  # monotonic: when requests still out are given up
        self.lock = threading.Lock()
        self.held: dict[str, HeldBatch] = {}
        self.lost: list[str] = []  # batches taken over from this process
        self.unrecorded: dict[str, int] = {}  # batch -> rows whose outcome the ledger lacks
        self.abandoned = 0  # rows made ambiguous at the shutdown deadline
        self.failure: BaseException | None = None
        self.sent_this_run = 0
        self.done_this_run = 0
        self.ambiguous_streak = 0
        # The highest row any worker of this process claimed: every claim looks above it
        # first (see batches.claim_batch), so it does not walk past the rows the other
        # workers took since its own last batch (three batches' worth with four workers).
        self.frontier = 0
        self.statistics_fresh = False  # see _claim
        self.tracked: tracking.TrackedSend | None = None  # set when recipients need reader tokens

    def halt(self, reason: str) -> None:
        with self.lock:
            if self.stopped is None:
                self.stopped = reason
        self.stop.set()

    def interrupt(self, reason: str) -> None:
        """The process is stopping: no new request, ``shutdown_seconds`` for those out."""
        with self.lock:
            if self.interrupted is None:
                self.interrupted = reason
                self.deadline = time.monotonic() + self.shutdown_seconds
        self.halt(f"{reason}: no new request was sent after it")

    def _wait(self, seconds: float) -> None:
        """A backoff: wakes when the run stops."""
        if self.sleep is not None:
            self.sleep(seconds)
        else:
            self.stop.wait(seconds)

    def _claim(self, batch_id: str) -> tuple[list[Claimed], int]:
        """Claim through database blips; a claim whose answer was lost may have committed,
        so a retry first looks for the batch."""
        tried = False

        def attempt() -> tuple[list[Claimed], int]:
            nonlocal tried
            if tried and (found := batches.claimed_rows(self.engine, batch_id, self.owner)) is not None:
                return found
            tried = True
            return self._claim_once(batch_id)

        return self.patience(attempt)

    def _claim_once(self, batch_id: str) -> tuple[list[Claimed], int]:
        """A batch above the frontier; when none is left there, a look from the start (rows
        given back), once the planner's statistics are refreshed (once a run)."""
        claim = partial(
            batches.claim_batch,
            self.engine,
            self.send.id,
            self.batch_size,
            batch_id,
            owner=self.owner,
            lease_seconds=self.lease,
            started=not self.sender.per_message,
        )
        claimed, skipped = claim(after=self.frontier, below=False)
        if claimed or skipped or not self.frontier:
            return claimed, skipped
        with self.lock:
            if not self.statistics_fresh:
                batches.refresh_statistics(self.engine)
                self.statistics_fresh = True
        return claim(after=0)

    def worker(self) -> None:
        try:
            while not self.stop.is_set():
                batch_id = batches.new_batch_id()
                claimed_at = batches.utcnow()
                claimed, skipped = self._claim(batch_id)
                if skipped:
                    self._advance(skipped, 0)
                if not claimed:
                    if not skipped:
                        return
                    continue
                with self.lock:
                    self.frontier = max(self.frontier, claimed[-1].key)
                self._hold(batch_id, claimed, claimed_at)
        except StoreError as exc:
            self.halt(f"the database could not be used: {exc}")
        except BaseException as exc:  # a bug: the run stops, and the caller raises it
            self.failure = exc
            self.halt(f"{type(exc).__name__}: {exc}")

    def _hold(self, batch_id: str, claimed: list[Claimed], claimed_at: dt.datetime) -> None:
        """Deliver one claimed batch; whatever happens, what is known is written (or the
        batch is left to expire into reported ambiguity)."""
        held = HeldBatch(
            engine=self.engine,
            fence=batches.Fence(batch_id, self.owner),
            deliveries=self._deliveries(claimed),
            lease_seconds=self.lease,
            proven_until=claimed_at + dt.timedelta(seconds=self.lease),
            patience=self.patience,
            stopping=self.stop.is_set,
        )
        with self.lock:
            self.held[batch_id] = held
        try:
            self._deliver(held)
            if held.waiting and not held.done:
                held.give_back("not sent: the run stopped first")
            held.finish()
        finally:
            with self.lock:
                del self.held[batch_id]
                if held.lost is not None:
                    self.lost.append(batch_id)
                if held.unrecorded is not None:
                    self.unrecorded[batch_id] = held.size - sum(held.counts.values())
            if held.unrecorded is not None:
                self.halt(f"the ledger could not be written ({held.unrecorded}); see `newsletter send --status ISSUE`")

    def _deliveries(self, claimed: list[Claimed]) -> dict[int, Delivery]:
        pub = self.settings.publication
        return {
            c.key: Delivery(
                key=c.key,
                recipient=links.recipient(
                    pub, c.email, c.name, c.token, tracking.reader_token(self.tracked, c.key) if self.tracked else ""
                ),
            )
            for c in claimed
        }

    def _deliver(self, held: HeldBatch) -> None:
        """Send the batch's waiting recipients until each has an outcome, retrying what
        proves nothing was accepted; every attempt first proves the batch is still ours."""
        batch_id = held.batch_id
        attempt = 0
        while held.waiting and held.may_send():
            batch = Batch(
                issue=self.send.issue,
                batch_id=batch_id,
                email=self.email,
                deliveries=list(held.waiting.values()),
                ledger=True,
                recorder=held,
            )
            try:
                result = self.sender.send(batch)
            except AmbiguousDeliveryError as exc:
                rows = len(held.waiting)
                held.all_ambiguous(str(exc))
                self._ambiguous(batch_id, rows, str(exc), whole=True)
                return
            except PermanentDeliveryError as exc:
                self.halt(str(exc))  # first: no other worker of this run may take the rows back
                held.give_back(str(exc))  # refused: nothing was delivered
                return
            except DeliveryError as exc:
                attempt += 1
                if attempt > self.max_retries or self.stop.is_set():
                    self.halt(f"{exc} (gave up after {attempt} attempts; run the send again to resume)")
                    held.give_back(str(exc))
                    return
                delay = backoff(attempt, exc.retry_after, self.rng)
                log.warning("batch %s: %s; retry %d/%d in %.1f s", batch_id, exc, attempt, self.max_retries, delay)
                self._wait(delay)
                continue
            held.absorb(result)
            if result.ambiguous:
                self._ambiguous(
                    batch_id,
                    len(result.ambiguous),
                    next(iter(result.ambiguous.values())),
                    whole=not result.sent,
                    counted=True,
                )
            elif result.sent:
                with self.lock:
                    self.ambiguous_streak = 0
            self._advance(len(result.sent) + len(result.rejected) + len(result.ambiguous), len(result.sent))
            if held.waiting and not held.done and result.retry:
                held.flush()
                attempt += 1
                reason = next(iter(result.retry.values()))
                if attempt > self.max_retries or self.stop.is_set():
                    if not self.stop.is_set():
                        self.halt(
                            f"{len(held.waiting)} recipients not accepted: {reason} (run the send again to resume)"
                        )
                    held.give_back(reason)
                    return
                self._wait(backoff(attempt, None, self.rng))

    def _ambiguous(self, batch_id: str, rows: int, reason: str, *, whole: bool, counted: bool = False) -> None:
        """Log ambiguous rows, count them for the progress bar unless ``counted``, and stop
        the run after ``max_ambiguous_batches`` wholly ambiguous batches in a row."""
        log.warning("batch %s: %d recipients ambiguous (not retried): %s", batch_id, rows, reason)
        with self.lock:
            self.ambiguous_streak = self.ambiguous_streak + 1 if whole else 0
            streak = self.ambiguous_streak
        if not counted:
            self._advance(rows, 0)
        if streak >= self.max_ambiguous:
            self.halt(
                f"{streak} batches in a row may or may not have arrived ({reason}); stopped rather "
                "than risk more: see `newsletter send --status ISSUE`, then `--reconcile`"
            )

    def _advance(self, done: int, sent: int) -> None:
        with self.lock:
            self.done_this_run += done
            self.sent_this_run += sent
            so_far = self.done_this_run
        if self.progress:
            self.progress(so_far, self.send.audience)

    @contextmanager
    def _heartbeat(self) -> Iterator[None]:
        """Renew the leases of the batches this process holds every quarter lease while
        the run lasts; each batch learns the lease it now has. Batches whose outcome
        could not be written are left out, so their lease runs out and they are reported."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.lease / 4):
                now = batches.utcnow()
                with self.lock:
                    held = dict(self.held)
                keep_out = [b for b, h in held.items() if h.done]
                try:
                    renewed = batches.renew_leases(self.engine, self.owner, self.lease, now, keep_out=keep_out)
                except Exception as exc:  # the next beat tries again; the fence is the safety net
                    log.warning("could not renew the send's leases: %s", exc)
                    continue
                until = now + dt.timedelta(seconds=self.lease)
                for batch_id in renewed:
                    if batch_id in held:
                        held[batch_id].renewed(until)

        thread = threading.Thread(target=beat, name="send-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def run(self, concurrency: int) -> None:
        """Work until nothing is pending, then wait while other live processes still
        have batches in flight (rows they give back are taken up again)."""
        with self._heartbeat(), shutdown.listening(self.interrupt):
            try:
                while True:
                    self._work(concurrency)
                    if self.failure is not None:
                        raise self.failure
                    if self.stop.is_set():
                        return
                    self.patience(batches.expire_dead_owners, self.engine, self.send.id)
                    if self.patience(ledger.has_rows, self.engine, self.send.id, "pending"):
                        continue
                    if not self.patience(ledger.has_rows, self.engine, self.send.id, "in_flight"):
                        return
                    log.info("waiting for the batches another process is sending")
                    if self.stop.wait(OTHERS_POLL):
                        return
            except KeyboardInterrupt:
                shutdown.request("interrupted")
            except StoreError as exc:
                self.halt(f"the database could not be used: {exc}")

    def _work(self, concurrency: int) -> None:
        """Run the workers to their end; on a stop request, wait for requests already
        out until the deadline, then give their batches up as ambiguous and return
        (the worker threads are daemons: a request that never answers holds nothing).
        The wait is a sleep, not ``Thread.join``: a KeyboardInterrupt that lands in
        ``join`` marks the joined thread finished while it still runs (CPython #90882)."""
        running = [concurrency]

        def work() -> None:
            try:
                self.worker()
            finally:
                with self.lock:
                    running[0] -= 1

        for n in range(concurrency):
            threading.Thread(target=work, name=f"send-{n}", daemon=True).start()
        while True:
            try:
                while running[0]:
                    time.sleep(0.05)
                    if self.deadline is not None and time.monotonic() >= self.deadline:
                        self._abandon()
                        return
                return
            except KeyboardInterrupt:
                shutdown.request("interrupted")

    def _abandon(self) -> None:
        """The shutdown deadline passed with requests still out: their batches are given
        up (a generation later, so a late answer writes nothing) as ambiguous."""
        self.patience.abort.set()
        with self.lock:
            held = list(self.held.values())
        for batch in held:
            try:
                rows = batch.abandon(f"the send was stopped ({self.interrupted}) before the provider answered")
            except StoreError as exc:
                log.error(
                    "batch %s: could not record it as ambiguous (%s): it will be when its lease runs out",
                    batch.batch_id,
                    exc,
                )
                continue
            with self.lock:
                self.abandoned += rows


OTHERS_POLL = 0.5  # seconds between looks at another process's batches


def _by_reason(outcomes: dict[int, str]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for key, reason in outcomes.items():
        grouped.setdefault(reason, []).append(key)
    return grouped


def send_issue(
    settings: Settings,
    path: Path,
    *,
    engine: Engine | None = None,
    sender: Sender | None = None,
    progress: Progress | None = None,
    allow_draft: bool = False,
    allow_changed: bool = False,
    allow_empty: bool = False,
    sleep: Callable[[float], object] | None = None,
    rng: random.Random | None = None,
) -> SendSummary:
    """Send the issue at ``path`` to every active subscriber, exactly once; resumable.
    ``sleep``: how backoffs wait (default: until the delay passes or the run stops).

    Every run checks, before anything is frozen or sent: the issue is not a draft (unless
    ``allow_draft``), its build passes, the email is the one pinned when the audience was
    frozen (unless ``allow_changed``), and the sender works (``Sender.check``). The
    audience is frozen only then, and an empty one is refused unless ``allow_empty``.
    """
    issue = issuefile.load(path)
    with database(settings, engine) as db:
        return _send(
            settings,
            path,
            issue,
            db,
            sender,
            progress,
            allow_draft=allow_draft,
            allow_changed=allow_changed,
            allow_empty=allow_empty,
            sleep=sleep,
            rng=rng,
        )


def _send(
    settings: Settings,
    path: Path,
    issue: Issue,
    engine: Engine,
    sender: Sender | None,
    progress: Progress | None,
    *,
    allow_draft: bool,
    allow_changed: bool,
    allow_empty: bool,
    sleep: Callable[[float], object] | None,
    rng: random.Random | None,
) -> SendSummary:
    from newsletter.senders import sender_for

    existing = ledger.get_send(engine, issue.slug)
    if issue.status == "sent" and (existing is None or existing.finished_at is not None):
        summary = _summary(engine, existing, issue.slug) if existing else SendSummary(issue.slug, 0)
        summary.already_complete = True
        return summary
    if issue.status == "draft" and not allow_draft:
        raise SendError(f"{path}: is a draft; approve it first (`newsletter approve {path}`)")
    email = _build(issue, path, settings)
    _render_check(email, path, settings)
    pinned = content_hash(email)
    if existing is not None and (changed := _changes(existing, email, pinned)):
        if not allow_changed:
            raise SendError(
                f"{path}: changed since its audience was frozen at "
                f"{existing.created_at:%Y-%m-%d %H:%M} UTC: {'; '.join(changed)}. Restore it, "
                "or pass --allow-changed to send the rest the new version"
            )
        log.warning("%s: sending a changed issue to the rest of the audience: %s", path, "; ".join(changed))
    with sender_for(settings, sender) as backend:
        backend.check()  # before the audience is frozen: a sender that cannot send freezes nothing
        if existing is None:
            send, _created = ledger.start_send(engine, issue.slug, email.subject, pinned, allow_empty=allow_empty)
        else:
            send = existing
            if send.content_hash != pinned or send.subject != email.subject:
                ledger.pin_content(engine, send.id, email.subject, pinned)
        patience = Patience(settings.database.retry_seconds)
        repaired = patience(batches.sweep, engine, send.id)
        reconciled = patience(ledger.reconcile, engine, send_id=send.id)
        patience(batches.expire_dead_owners, engine, send.id)
        email, tracked = _tracked(engine, email, settings, backend.name)
        run = _Run(engine, send, email, settings, backend, progress, sleep, rng or random.Random())
        run.tracked = tracked
        run.run(settings.delivery.concurrency)
    try:
        summary = run.patience(_summary, engine, send, issue.slug)
        if not run.unrecorded:
            run.patience(_finish, engine, send, path, summary)
    except StoreError as exc:
        raise StoreError(f"{path}: after the run: {exc}{_attention(run.unrecorded)}") from None
    summary.sent_this_run = run.sent_this_run
    summary.stopped = summary.stopped or run.stopped
    summary.interrupted = run.interrupted
    summary.lost_batches = run.lost
    summary.unrecorded = run.unrecorded
    summary.abandoned = run.abandoned
    summary.repaired = repaired
    summary.reconciled = reconciled
    return summary


def _attention(unrecorded: dict[str, int]) -> str:
    """What needs an operator after the ledger could not be written: rows and batches."""
    if not unrecorded:
        return ""
    names = ", ".join(list(unrecorded)[:5]) + (f" and {len(unrecorded) - 5} more" if len(unrecorded) > 5 else "")
    return f"; {sum(unrecorded.values()):,} recipients of batches {names} have outcomes the ledger could not record"


def _tracked(
    engine: Engine, email: render.RenderedEmail, settings: Settings, sender_name: str
) -> tuple[render.RenderedEmail, tracking.TrackedSend | None]:
    """The email with its tracking (see tracking.py), and the recorded tracking when a
    recipient needs a reader token (per_subscriber through the project's own redirect)."""
    pub = settings.publication
    links = tracking.email_links(email.html, pub, tuple(email.placeholders.values()))
    tracked = tracking.record_send(engine, email.slug, links, settings.tracking)
    prepared = tracking.prepare(email, tracked, pub, sender_name)
    own = sender_name not in tracking.PROVIDER_TRACKED
    per_reader = own and "per_subscriber" in (tracked.clicks, tracked.opens)
    return prepared, tracked if per_reader else None


def _finish(engine: Engine, send: ledger.Send, path: Path, summary: SendSummary) -> None:
    """Mark the send finished and the issue file sent when every row is settled."""
    if summary.complete and ledger.finish_send(engine, send.id):
        current = issuefile.load(path)
        if current.status != "sent":
            issuefile.set_status(path, "sent", sent_at=dt.datetime.now(dt.UTC))


def _summary(engine: Engine, send: ledger.Send, slug: str) -> SendSummary:
    counts = ledger.counts(engine, send.id)
    return SendSummary(
        issue=slug,
        audience=send.audience,
        sent=counts.sent,
        skipped=counts.skipped,
        rejected=counts.rejected,
        pending=counts.pending,
        ambiguous=counts.ambiguous,
        in_flight=counts.in_flight,
        ambiguous_batches=ledger.batches(engine, send.id, "ambiguous") if counts.ambiguous else [],
    )


def _existing_send(settings: Settings, path: Path, engine: Engine) -> tuple[Issue, ledger.Send]:
    issue = issuefile.load(path)
    send = ledger.get_send(engine, issue.slug)
    if send is None:
        raise SendError(f"{path}: has not been sent; its audience is not frozen yet")
    return issue, send


def settle(
    settings: Settings, path: Path, as_state: str, *, batch_id: str | None = None, engine: Engine | None = None
) -> ledger.OperatorSettle:
    """An operator settles a send's ambiguous rows (all, or one batch's) as ``sent`` or
    ``pending`` (send them again). A batch whose owner may still be sending (in flight:
    a live lease, or a dead owner not reported yet) is refused and listed."""
    with database(settings, engine) as db:
        _issue, send = _existing_send(settings, path, db)
        batches.sweep(db, send.id)
        # Only rows already reported ambiguous: a dead process's batch that nobody has been
        # shown yet (``--status``, ``--reconcile`` and every send report it) stays out.
        if batch_id is not None and not any(b.batch_id == batch_id for b in ledger.batches(db, send.id, "ambiguous")):
            raise SendError(f"{path}: no ambiguous recipients in batch {batch_id!r} (see `newsletter send --status`)")
        done = ledger.settle_ambiguous(db, send.id, as_state, batch_id=batch_id)
        if batch_id is not None and done.refused:
            live = done.refused[0]
            raise SendError(
                f"{path}: batch {batch_id} is still in flight (owner {live.owner}, lease until "
                f"{live.lease_until:%H:%M:%S} UTC): not touched; once its owner is gone, "
                "`newsletter send --status` reports it"
            )
        _finish(db, send, path, _summary(db, send, send.issue))
    return done


@dataclass
class Reconciliation:
    """What ``send --reconcile`` settled from provider events, and what is still unknown:
    ambiguous batches within ``delivery.ambiguous_grace`` (events may still come) and
    those past it (check the provider's activity log, then settle by hand)."""

    issue: str
    settled: ledger.Reconciled
    waiting: list[ledger.BatchInfo]
    unknown: list[ledger.BatchInfo]
    complete: bool
    pending: int = 0  # not sent yet: the next send (or the scheduler's resume) sends them
    in_flight: int = 0  # being sent by a live process

    @property
    def remaining(self) -> int:
        return sum(b.rows for b in self.waiting + self.unknown)


def reconcile(
    settings: Settings, path: Path, *, engine: Engine | None = None, now: dt.datetime | None = None
) -> Reconciliation:
    """Settle a send's ambiguous rows that the provider's events prove (see
    ``ledger.reconcile``); report the rest, split by ``delivery.ambiguous_grace``."""
    now = now or dt.datetime.now(dt.UTC)
    with database(settings, engine) as db:
        _issue, send = _existing_send(settings, path, db)
        batches.sweep(db, send.id)
        batches.expire_dead_owners(db, send.id, now)
        settled = ledger.reconcile(db, send_id=send.id, now=now)
        left = ledger.batches(db, send.id, "ambiguous")
        summary = _summary(db, send, send.issue)
        _finish(db, send, path, summary)
    grace = dt.timedelta(minutes=settings.delivery.ambiguous_grace)
    return Reconciliation(
        issue=send.issue,
        settled=settled,
        waiting=[b for b in left if b.claimed_at + grace > now],
        unknown=[b for b in left if b.claimed_at + grace <= now],
        complete=summary.complete,
        pending=summary.pending,
        in_flight=summary.in_flight,
    )


@dataclass
class SendStatus:
    """``newsletter send --status``: the issue file's state and the ledger's."""

    issue: str
    file_status: str
    send: ledger.Send | None
    counts: ledger.Counts
    in_flight: list[ledger.BatchInfo]
    ambiguous: list[ledger.BatchInfo]
    now: dt.datetime


def status(settings: Settings, path: Path, *, engine: Engine | None = None) -> SendStatus:
    """Per-state counts, the batches in flight (age, owner, lease) and the ambiguous ones;
    rows in flight that no batch in flight explains are made ambiguous first (``sweep``)."""
    issue = issuefile.load(path)
    now = dt.datetime.now(dt.UTC)
    with database(settings, engine) as db:
        send = ledger.get_send(db, issue.slug)
        if send is None:
            return SendStatus(issue.slug, issue.status, None, ledger.Counts(), [], [], now)
        batches.sweep(db, send.id)
        return SendStatus(
            issue.slug,
            issue.status,
            send,
            ledger.counts(db, send.id),
            ledger.batches(db, send.id, "in_flight"),
            ledger.batches(db, send.id, "ambiguous"),
            now,
        )
