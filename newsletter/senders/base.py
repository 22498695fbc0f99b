"""The ``Sender`` interface every delivery backend implements, and the batch it is given.

The send job knows no backend by name: it hands a ``Batch`` (the rendered email, once,
plus up to ``max_batch_size`` recipients) to ``Sender.send`` and records the
``BatchResult``. A backend raises ``DeliveryError`` only when the outcome proves nothing
was accepted and the whole batch may be retried (429, 5xx, refused connections, DNS, a
failed TLS handshake; ``retry_after`` when the service says how long to wait),
``PermanentDeliveryError`` when retrying cannot help (400/401/403/413), and
``AmbiguousDeliveryError`` when the request may have arrived (a timeout after the body
was sent, a connection reset before the answer): those recipients are never retried.
``SenderBase`` gives backends a default ``check``, ``close`` and the ``with`` protocol.

A backend that learns each recipient's outcome as it goes (SMTP, outbox) tells the
batch's ``recorder`` at once, and asks it before each message whether it may still
send (the send job may have lost the batch or be stopping); its ``BatchResult`` still
lists every outcome.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol

from newsletter.errors import DeliveryError
from newsletter.models import Recipient
from newsletter.render import RenderedEmail


@dataclass(frozen=True)
class Delivery:
    """One recipient of a batch; ``key`` identifies its ledger row."""

    key: int
    recipient: Recipient


Outcome = Literal["sent", "rejected", "ambiguous"]


class Recorder(Protocol):
    """The send job's side of a ledger batch (``sendbatch.HeldBatch``)."""

    def may_send(self, upcoming: Sequence[int]) -> bool:
        """Before each message: False when no more may leave for this batch. ``upcoming``:
        the keys of this message and the next few the caller will send; they are marked
        started (in one write for several messages) before True is returned."""
        ...

    def record(self, key: int, outcome: Outcome, detail: str | None = None) -> None:
        """A recipient's outcome, as soon as the server answered (or did not)."""
        ...


@dataclass(frozen=True)
class Batch:
    """What one ``Sender.send`` call delivers: one email to many recipients."""

    issue: str  # the issue's slug
    batch_id: str  # unique per batch; SendGrid gets it in custom_args
    email: RenderedEmail
    deliveries: Sequence[Delivery]
    # the deliveries' keys are ledger rows (a send's batch, not a test or a notice): the
    # SMTP backend then names each one in its envelope sender and Message-ID (bounces)
    ledger: bool = False
    # per-message outcomes to the send job as they come (a ledger batch); None: only the
    # BatchResult counts
    recorder: Recorder | None = None


@dataclass
class BatchResult:
    """What happened to each recipient of a batch that was not refused as a whole.

    ``sent``: accepted by the service; ``rejected``: refused for good for that recipient
    (e.g. SMTP 550 user unknown), with the reason; ``retry``: not sent, may be retried
    (e.g. an SMTP connection dropped before this recipient), with the reason;
    ``ambiguous``: may have been accepted (e.g. the connection dropped after DATA), with
    the reason: never retried blindly.
    """

    sent: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    retry: dict[int, str] = field(default_factory=dict)
    ambiguous: dict[int, str] = field(default_factory=dict)
    message_id: str | None = None  # SendGrid's X-Message-Id for the batch


class Sender(Protocol):
    """A delivery backend: outbox, smtp, sendgrid, or the in-memory one for tests.
    ``per_message``: it sends one message a recipient and tells the batch's recorder
    before and after each one (SMTP, outbox); False: one request for the whole batch."""

    name: str
    max_batch_size: int
    per_message: bool

    def check(self) -> None:
        """Before an audience is frozen: raise DeliveryError if this backend cannot send
        (credentials refused, host unreachable), using the cheapest request it has."""
        ...

    def send(self, batch: Batch) -> BatchResult:
        """Deliver ``batch``; raise DeliveryError and its subclasses as above."""
        ...

    def close(self) -> None:
        """Release connections; the sender is not used again."""
        ...


class SenderBase:
    """Defaults for backends: nothing to check, nothing to close, usable in ``with``."""

    per_message = False

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> SenderBase:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def send_one(sender: Sender, kind: str, email: RenderedEmail, key: int, recipient: Recipient) -> None:
    """Send an email built in code (a confirmation, a welcome) to one subscriber as a
    batch of one, labelled ``kind``; DeliveryError unless the backend accepted it."""
    result = sender.send(
        Batch(issue=kind, batch_id=secrets.token_hex(8), email=email, deliveries=[Delivery(key, recipient)])
    )
    if key not in result.sent:
        reasons = {**result.rejected, **result.retry, **result.ambiguous}
        raise DeliveryError(f"{kind} email to subscriber {key} not sent: {reasons.get(key, 'no reason given')}")
