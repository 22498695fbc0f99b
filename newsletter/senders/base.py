"""The ``Sender`` interface every delivery backend implements, and the batch it is given.

The send job knows no backend by name: it hands a ``Batch`` (the rendered email, once,
plus up to ``max_batch_size`` recipients) to ``Sender.send`` and records the
``BatchResult``. A backend raises ``DeliveryError`` when the whole batch may be retried
(429, 5xx, timeouts, refused connections; ``retry_after`` when the service says how long
to wait) and ``PermanentDeliveryError`` when retrying cannot help (400/401/403/413).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from newsletter.models import Recipient
from newsletter.render import RenderedEmail


@dataclass(frozen=True)
class Delivery:
    """One recipient of a batch; ``key`` identifies its ledger row."""

    key: int
    recipient: Recipient


@dataclass(frozen=True)
class Batch:
    """What one ``Sender.send`` call delivers: one email to many recipients."""

    issue: str  # the issue's slug
    batch_id: str  # unique per batch; SendGrid gets it in custom_args
    email: RenderedEmail
    deliveries: Sequence[Delivery]


@dataclass
class BatchResult:
    """What happened to each recipient of a batch that was not refused as a whole.

    ``sent``: accepted by the service; ``rejected``: refused for good for that recipient
    (e.g. SMTP 550 user unknown), with the reason; ``retry``: not sent, may be retried
    (e.g. an SMTP connection dropped before this recipient), with the reason.
    """

    sent: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    retry: dict[int, str] = field(default_factory=dict)
    message_id: str | None = None  # SendGrid's X-Message-Id for the batch


class Sender(Protocol):
    """A delivery backend: outbox, smtp, sendgrid, or the in-memory one for tests."""

    name: str
    max_batch_size: int

    def send(self, batch: Batch) -> BatchResult:
        """Deliver ``batch``; raise DeliveryError / PermanentDeliveryError as above."""
        ...

    def close(self) -> None:
        """Release connections; the sender is not used again."""
        ...
