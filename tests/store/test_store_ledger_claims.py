"""Batch claims that start above the worker's last claimed row (see
``ledger.claim_batch``): nothing pending below it is ever left behind."""

from __future__ import annotations

from sqlalchemy import Engine

from newsletter.store import ledger, subscribers


def test_claims_above_the_last_one_still_find_rows_given_back_below_it(engine: Engine) -> None:
    for i in range(10):
        subscribers.add(engine, f"reader{i}@example.org")
    send, _ = ledger.start_send(engine, "2024-10-25", "Subject")

    def claim(after: int) -> list[int]:
        claimed, _ = ledger.claim_batch(
            engine, send.id, 3, ledger.new_batch_id(), owner="me:1:a", lease_seconds=60, after=after
        )
        return [c.key for c in claimed]

    first = claim(0)
    second = claim(first[-1])
    assert second == [k + 3 for k in first]
    with engine.connect() as conn:
        batch_id = conn.exec_driver_sql(f"SELECT batch_id FROM deliveries WHERE id = {first[0]:d}").scalar_one()
    ledger.release(engine, batch_id, first, "refused: nothing was delivered")
    third = claim(second[-1])
    fourth = claim(third[-1])
    assert len(fourth) == 1  # the last row above
    assert claim(fourth[-1]) == first  # nothing above: the rows given back, from the start
    assert claim(first[-1]) == []
    assert sorted(second + third + fourth + first) == sorted({*first, *second, *third, *fourth})
    assert ledger.counts(engine, send.id).in_flight == 10
