"""The outbox backend, the embedded default: each recipient's complete message is written
to ``<dir>/<issue slug>/<key>-<email>.eml`` so a user can open what subscribers would
get. Files are written atomically; a rerun overwrites the same files.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from newsletter.errors import DeliveryError, HeaderError, PermanentDeliveryError
from newsletter.senders.base import Batch, BatchResult, SenderBase
from newsletter.senders.mime import MessageTemplate
from newsletter.yamlfile import atomic_write

STARTED_AHEAD = 64  # files marked started in one ledger write (see smtp.STARTED_AHEAD)
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")
# Errors that another attempt will meet again: stop the send instead of retrying.
_PERMANENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR}


def safe_name(value: str, limit: int = 100) -> str:
    """``value`` as a file-name part: no separators, no leading dot, bounded length."""
    return _UNSAFE.sub("_", value).lstrip(".")[:limit] or "_"


class OutboxSender(SenderBase):
    """Writes .eml files instead of sending; nothing leaves the machine."""

    name = "outbox"
    per_message = True

    def __init__(self, directory: Path, max_batch_size: int = 500) -> None:
        self.directory = directory
        self.max_batch_size = max_batch_size

    def check(self) -> None:
        """The outbox folder exists (or can be made) and is writable."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise PermanentDeliveryError(f"outbox: cannot write in {self.directory}: {exc.strerror or exc}") from None

    def path_for(self, issue: str, key: int, address: str) -> Path:
        """Where the message for ledger row ``key`` of ``issue`` is written."""
        return self.directory / safe_name(issue) / f"{key}-{safe_name(address)}.eml"

    def send(self, batch: Batch) -> BatchResult:
        template = MessageTemplate(batch.email)
        result = BatchResult()
        recorder = batch.recorder
        for index, delivery in enumerate(batch.deliveries):
            ahead = STARTED_AHEAD if index % STARTED_AHEAD == 0 else 1
            if recorder is not None and not recorder.may_send([d.key for d in batch.deliveries[index : index + ahead]]):
                result.retry.update(
                    {
                        d.key: "not sent: the send stopped, or no longer owns this batch"
                        for d in batch.deliveries[index:]
                    }
                )
                return result
            try:
                data = template.render(delivery.recipient)
            except HeaderError as exc:
                result.rejected[delivery.key] = str(exc)
                if recorder is not None:
                    recorder.record(delivery.key, "rejected", str(exc))
                continue
            path = self.path_for(batch.issue, delivery.key, delivery.recipient.email)
            try:
                atomic_write(path, data)
            except OSError as exc:
                message = f"outbox: cannot write {path}: {exc.strerror or exc}"
                if exc.errno in _PERMANENT_ERRNOS:
                    raise PermanentDeliveryError(message) from None
                if not result.sent and not result.rejected:
                    raise DeliveryError(message) from None
                # Some files are written: report them; the rest may be retried.
                done = set(result.sent) | set(result.rejected)
                result.retry.update({d.key: message for d in batch.deliveries if d.key not in done})
                return result
            result.sent.append(delivery.key)
            if recorder is not None:
                recorder.record(delivery.key, "sent")
        return result
