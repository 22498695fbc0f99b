"""Delivery backends behind one small ``Sender`` interface (see ``base``): ``outbox``
writes .eml files, ``smtp`` talks to an SMTP server, ``sendgrid`` to SendGrid's API, and
``memory`` records batches for tests. ``make_sender`` picks the configured one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from newsletter.config import Settings
from newsletter.senders.base import Batch, BatchResult, Delivery, Sender, SenderBase

__all__ = ["Batch", "BatchResult", "Delivery", "Sender", "SenderBase", "make_sender", "sender_for"]


@contextmanager
def sender_for(settings: Settings, given: Sender | None = None) -> Iterator[Sender]:
    """``given``, or the configured backend made now and closed afterwards."""
    if given is not None:
        yield given
        return
    made = make_sender(settings)
    try:
        yield made
    finally:
        made.close()


def make_sender(settings: Settings) -> Sender:
    """The backend ``delivery.backend`` names, configured; secrets are read now, so a
    missing API key or password is a ConfigError before anything is sent."""
    backend = settings.delivery.backend
    if backend == "sendgrid":
        from newsletter.senders.sendgrid import SendgridSender

        return SendgridSender.from_settings(settings)
    if backend == "smtp":
        from newsletter.senders.smtp import SmtpSender

        return SmtpSender.from_settings(settings)
    from newsletter.senders.outbox import OutboxSender

    return OutboxSender(settings.delivery.outbox.dir, max_batch_size=settings.delivery.batch_size)
