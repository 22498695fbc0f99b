"""One claimed batch in a sending process (``HeldBatch``): its fence, its lease as last
proven, the recipients still waiting, and their outcomes written to the ledger as they
come, in group commits, for backends that know each recipient's outcome at once (SMTP,
outbox). It is the ``Recorder`` such a backend is handed with the batch. Also the
patience with which the send job rides through database blips (``Patience``).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from newsletter.errors import BatchLostError, StoreError, TransientStoreError
from newsletter.senders.base import BatchResult, Delivery, Outcome
from newsletter.store import batches
from newsletter.store.batches import Fence, Settlement

log = logging.getLogger("newsletter.send")

P = ParamSpec("P")
T = TypeVar("T")

GROUP_ROWS = 100  # outcomes written in one commit at most ...
GROUP_SECONDS = 0.25  # ... and at least this often while outcomes come


@dataclass
class Patience:
    """Retries a ledger call through transient database errors (a restart, a failover,
    a terminated connection, a busy or full SQLite) for ``seconds``, backing off, and
    gives up early once ``abort`` is set (the shutdown deadline passed)."""

    seconds: float
    abort: threading.Event = field(default_factory=threading.Event)
    rng: random.Random = field(default_factory=random.Random)

    def __call__(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        deadline = time.monotonic() + self.seconds
        attempt = 0
        while True:
            try:
                return call(*args, **kwargs)
            except TransientStoreError as exc:
                attempt += 1
                left = deadline - time.monotonic()
                if left <= 0 or self.abort.is_set():
                    raise
                delay = min(left, self.rng.uniform(0.5, 1.0) * min(5.0, 0.1 * 2**attempt))
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("%s; trying again for %.0f s more", exc, left)
                if self.abort.wait(delay):
                    raise


@dataclass
class _Pending:
    """Outcomes known but not yet written."""

    sent: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    ambiguous: dict[int, str] = field(default_factory=dict)
    released: dict[int, str] = field(default_factory=dict)
    since: float = 0.0  # monotonic time of the first one

    def __len__(self) -> int:
        return len(self.sent) + len(self.rejected) + len(self.ambiguous) + len(self.released)


class HeldBatch:
    """A batch this process claimed and still owns, as its worker and the backend's
    threads see it. ``may_send`` before each request; ``record`` each outcome; ``absorb``
    a backend's result; ``finish`` writes what is left and closes the batch with its
    last rows. When the fence fails (``lost``) or the ledger cannot be written past the
    database's patience (``unrecorded``), nothing more is sent or written for it."""

    def __init__(
        self,
        *,
        engine: Engine,
        fence: Fence,
        deliveries: Mapping[int, Delivery],
        lease_seconds: float,
        proven_until: dt.datetime,
        patience: Patience,
        stopping: Callable[[], bool],
    ) -> None:
        self.engine, self.fence, self.patience, self.stopping = engine, fence, patience, stopping
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.proven_until = proven_until
        self.waiting: dict[int, Delivery] = dict(deliveries)
        self.size = len(deliveries)
        self.message_id: str | None = None
        self.lost: BatchLostError | None = None
        self.unrecorded: str | None = None  # why the ledger could not be written
        self.abandoned = False  # given up at the shutdown deadline
        self.closed = False
        self.counts: dict[str, int] = {"sent": 0, "rejected": 0, "ambiguous": 0, "released": 0}
        self._pending = _Pending()
        self._written = 0  # rows written by earlier commits
        self._started: set[int] = set()  # rows marked started (per-message backends)
        self._lock = threading.RLock()

    @property
    def batch_id(self) -> str:
        return self.fence.batch_id

    @property
    def done(self) -> bool:
        """Nothing more may be sent or written for this batch."""
        return self.lost is not None or self.unrecorded is not None or self.abandoned

    def renewed(self, lease_until: dt.datetime) -> None:
        """The heartbeat renewed this batch's lease (in a fenced statement)."""
        with self._lock:
            self.proven_until = max(self.proven_until, lease_until)

    def may_send(self, upcoming: Sequence[int] = ()) -> bool:
        """Before each request: False when the batch is lost or unrecordable or the run
        is stopping. ``upcoming``: rows a per-message backend is about to send; those not
        marked started yet are, durably, with the outcomes waiting to be written, in one
        write (which also proves the fence). Once more than half the lease went by since
        it was last proven (the process was paused, or the heartbeat could not reach the
        database), the fence is proven again first, renewing the lease."""
        if self.done or self.stopping():
            return False
        fresh = dt.datetime.now(dt.UTC) + self.lease / 2 < self.proven_until
        if fresh and all(key in self._started for key in upcoming):
            return True
        with self._lock:
            if self.done:
                return False
            if not fresh:
                try:
                    self.proven_until = self.patience(
                        batches.prove, self.engine, self.fence, self.lease.total_seconds()
                    )
                except BatchLostError as exc:
                    self._lose(exc)
                    return False
                except (StoreError, SQLAlchemyError) as exc:
                    self._cannot_write(exc)
                    return False
            marks = [key for key in upcoming if key not in self._started and key in self.waiting]
            if marks:
                self._write(close=False, started=marks)
                if self.done:
                    return False
                self._started.update(marks)
        return not self.stopping()

    def record(self, key: int, outcome: Outcome, detail: str | None = None) -> None:
        """One recipient's outcome, as soon as the backend knows it; written in a group
        commit (``GROUP_ROWS`` or ``GROUP_SECONDS``, whichever comes first)."""
        with self._lock:
            self._note(key, outcome, detail)
            pending = self._pending
            if len(pending) >= GROUP_ROWS or time.monotonic() - pending.since >= GROUP_SECONDS:
                self._write(close=False)

    def _note(self, key: int, outcome: Outcome, detail: str | None) -> None:
        if self.waiting.pop(key, None) is None:
            return  # recorded already, or not this batch's
        pending = self._pending
        if not pending:
            pending.since = time.monotonic()
        if outcome == "sent":
            pending.sent.append(key)
        elif outcome == "rejected":
            pending.rejected[key] = detail or "refused"
        else:
            pending.ambiguous[key] = detail or "the answer was lost"

    def absorb(self, result: BatchResult) -> None:
        """A backend's result: outcomes not recorded yet are noted, to be written by the
        next write (``flush``, ``finish``: a whole batch accepted is one statement); the
        recipients to retry stay waiting."""
        with self._lock:
            if result.message_id:
                self.message_id = result.message_id
            for key in result.sent:
                self._note(key, "sent", None)
            for key, reason in result.rejected.items():
                self._note(key, "rejected", reason)
            for key, reason in result.ambiguous.items():
                self._note(key, "ambiguous", reason)

    def flush(self) -> None:
        """Write the outcomes noted so far (before a backoff: a kill during it must not
        lose what is known)."""
        with self._lock:
            if self._pending:
                self._write(close=False)

    def all_ambiguous(self, reason: str) -> None:
        """The request for every waiting recipient may have arrived."""
        with self._lock:
            for key in list(self.waiting):
                self._note(key, "ambiguous", reason)

    def give_back(self, reason: str) -> None:
        """The waiting recipients were not sent (the failure proves it, or the run stops):
        back to pending."""
        with self._lock:
            pending = self._pending
            if not pending:
                pending.since = time.monotonic()
            pending.released.update(dict.fromkeys(self.waiting, reason))
            self.waiting.clear()

    def finish(self) -> None:
        """Write what is left; the batch closes with its last rows. A batch lost or
        unrecordable stays as it is (see ``done``)."""
        with self._lock:
            if not self.done and not self.waiting:
                self._write(close=True)

    def abandon(self, reason: str) -> int:
        """The run is stopping and this batch's request is still out past the deadline:
        outcomes known are written if the worker lets go within a second, then the batch
        is given up as ambiguous (``batches.abandon``). The rows made ambiguous."""
        if self._lock.acquire(timeout=1):
            try:
                if not self.done:
                    self._write(close=False)
            finally:
                self._lock.release()
        if self.done:
            return 0
        self.abandoned = True
        return batches.abandon(self.engine, self.fence, reason)

    def _write(self, *, close: bool, started: Sequence[int] = ()) -> None:
        pending, self._pending = self._pending, _Pending()
        if self.done:
            return
        everything = close and not self._written and len(pending.sent) == self.size
        outcome = Settlement(
            sent=None if everything else pending.sent,
            message_id=self.message_id,
            rejected=pending.rejected,
            ambiguous=pending.ambiguous,
            released=pending.released,
            started=started,
        )
        try:
            self.closed = self.patience(batches.settle, self.engine, self.fence, outcome, close=close)
        except BatchLostError as exc:
            self._lose(exc, unwritten=len(pending))
            return
        except (StoreError, SQLAlchemyError) as exc:  # any failed write: the batch stays open, to expire
            self._pending = pending
            self._cannot_write(exc)
            return
        self._written += len(pending)
        self.counts["sent"] += len(pending.sent)
        self.counts["rejected"] += len(pending.rejected)
        self.counts["ambiguous"] += len(pending.ambiguous)
        self.counts["released"] += len(pending.released)

    def _lose(self, exc: BatchLostError, unwritten: int = 0) -> None:
        self.lost = exc
        note = f"; {unwritten:,} outcomes known here were not recorded" if unwritten else ""
        log.warning(
            "%s: it was taken over (this process was paused or cut off past its lease); "
            "nothing more is sent or recorded for it%s",
            exc,
            note,
        )

    def _cannot_write(self, exc: Exception) -> None:
        self.unrecorded = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.error(
            "batch %s: the ledger could not be written (%s): its %d recipients still in flight "
            "will be reported ambiguous when its lease runs out",
            self.batch_id,
            exc,
            self.size - self._written,
        )
