"""The in-memory backend for tests: records every batch it is given and can be told to
fail a call (DeliveryError and its subclasses), refuse some addresses for good, leave
some to be retried or make them ambiguous, or answer through a ``handler`` function
(``Batch -> BatchResult``, like httpx's MockTransport). Thread-safe: the send job calls
it from several workers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from newsletter.errors import DeliveryError
from newsletter.senders.base import Batch, BatchResult, SenderBase

Handler = Callable[[Batch], BatchResult]


class MemorySender(SenderBase):
    """Delivers nothing; ``batches`` and ``delivered`` say what it was asked to deliver."""

    name = "memory"

    def __init__(
        self,
        max_batch_size: int = 1000,
        *,
        fail_on: Mapping[int, DeliveryError] | None = None,
        reject: Mapping[str, str] | None = None,
        retry: Mapping[str, str] | None = None,
        ambiguous: Mapping[str, str] | None = None,
        handler: Handler | None = None,
        check_error: DeliveryError | None = None,
    ) -> None:
        """``fail_on``: call number (1 = the first ``send``) -> the error that call raises;
        ``reject`` / ``retry`` / ``ambiguous``: address -> reason, reported per recipient
        every time; ``handler``: computes each call's result instead (after ``fail_on``);
        ``check_error``: what ``check()`` raises."""
        self.max_batch_size = max_batch_size
        self.fail_on = dict(fail_on or {})
        self.reject = dict(reject or {})
        self.retry = dict(retry or {})
        self.ambiguous = dict(ambiguous or {})
        self.handler = handler
        self.check_error = check_error
        self.checks = 0
        self.calls = 0
        self.batches: list[Batch] = []  # the batches accepted (not those that raised)
        self.closed = False
        self._lock = threading.Lock()

    def fail(self, call: int, error: DeliveryError) -> None:
        """Make the ``call``-th call of ``send`` (counting from 1) raise ``error``."""
        with self._lock:
            self.fail_on[call] = error

    @property
    def delivered(self) -> list[tuple[str, str]]:
        """(issue, address) of every recipient reported sent, in order."""
        with self._lock:
            batches = list(self.batches)
        return [
            (b.issue, d.recipient.email)
            for b in batches
            for d in b.deliveries
            if d.recipient.email not in self.reject
            and d.recipient.email not in self.retry
            and d.recipient.email not in self.ambiguous
        ]

    def check(self) -> None:
        with self._lock:
            self.checks += 1
        if self.check_error is not None:
            raise self.check_error

    def send(self, batch: Batch) -> BatchResult:
        with self._lock:
            if self.closed:
                raise RuntimeError("MemorySender.send after close()")
            self.calls += 1
            error = self.fail_on.pop(self.calls, None)
            if error is not None:
                raise error
            if len(batch.deliveries) > self.max_batch_size:
                raise ValueError(f"batch of {len(batch.deliveries)} over max_batch_size {self.max_batch_size}")
            self.batches.append(batch)
            if self.handler is not None:
                return self.handler(batch)
            result = BatchResult(message_id=f"memory-{self.calls}")
            for d in batch.deliveries:
                address = d.recipient.email
                if address in self.reject:
                    result.rejected[d.key] = self.reject[address]
                elif address in self.retry:
                    result.retry[d.key] = self.retry[address]
                elif address in self.ambiguous:
                    result.ambiguous[d.key] = self.ambiguous[address]
                else:
                    result.sent.append(d.key)
            return result

    def close(self) -> None:
        with self._lock:
            self.closed = True
