"""The in-memory sender the send job's tests rely on: it records, fails on demand and
reports per-recipient refusals."""

from __future__ import annotations

import pytest

from newsletter.errors import DeliveryError, PermanentDeliveryError
from newsletter.render import RenderedEmail
from newsletter.senders.memory import MemorySender
from tests.senders.conftest import deliveries, make_batch


def test_records_batches_and_deliveries(rendered: RenderedEmail) -> None:
    sender = MemorySender(max_batch_size=3)
    result = sender.send(make_batch(rendered, deliveries(3)))
    assert result.sent == [1, 2, 3] and result.message_id == "memory-1"
    assert [b.batch_id for b in sender.batches] == ["b-1"]
    assert sender.delivered == [("2024-10-25", f"reader{k}@example.net") for k in (1, 2, 3)]
    with pytest.raises(ValueError, match="over max_batch_size"):
        sender.send(make_batch(rendered, deliveries(4)))


def test_fails_the_nth_call(rendered: RenderedEmail) -> None:
    sender = MemorySender(fail_on={2: DeliveryError("503 from the fake", retry_after=5)})
    sender.fail(3, PermanentDeliveryError("401 from the fake"))
    sender.send(make_batch(rendered, deliveries(1)))
    with pytest.raises(DeliveryError) as info:
        sender.send(make_batch(rendered, deliveries(1, start=2)))
    assert info.value.retry_after == 5
    with pytest.raises(PermanentDeliveryError):
        sender.send(make_batch(rendered, deliveries(1, start=3)))
    sender.send(make_batch(rendered, deliveries(1, start=4)))
    assert sender.calls == 4
    assert [a for _, a in sender.delivered] == ["reader1@example.net", "reader4@example.net"]


def test_rejects_and_defers_addresses(rendered: RenderedEmail) -> None:
    sender = MemorySender(
        reject={"reader2@example.net": "550 no such user"}, retry={"reader3@example.net": "451 try later"}
    )
    result = sender.send(make_batch(rendered, deliveries(4)))
    assert result.sent == [1, 4]
    assert result.rejected == {2: "550 no such user"}
    assert result.retry == {3: "451 try later"}
    sender.close()
    with pytest.raises(RuntimeError):
        sender.send(make_batch(rendered, deliveries(1)))
