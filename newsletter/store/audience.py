"""The audience the send job reads: active subscribers, streamed in batches by id
(keyset pagination), so a million subscribers never sit in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Engine, func, select

from newsletter.store.tables import subscribers


@dataclass(frozen=True, slots=True)
class AudienceMember:
    """What one message needs: who (id, email, name) and the unsubscribe token."""

    id: int
    email: str
    name: str
    token: str


def iter_active(engine: Engine, batch_size: int = 1000, *, after_id: int = 0) -> Iterator[list[AudienceMember]]:
    """Active subscribers in ascending id, ``batch_size`` at a time.

    Each batch is its own short read, so nothing holds a transaction (or SQLite's WAL)
    open while the caller sends; someone who unsubscribes between two batches is not in
    the later ones. ``after_id`` resumes after a given subscriber.
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    query = select(subscribers.c.id, subscribers.c.email, subscribers.c.name, subscribers.c.token).where(
        subscribers.c.status == "active"
    )
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                query.where(subscribers.c.id > after_id).order_by(subscribers.c.id).limit(batch_size)
            ).all()
        if not rows:
            return
        yield [AudienceMember(id, email, name, token) for id, email, name, token in rows]
        after_id = rows[-1][0]


def count_active(engine: Engine) -> int:
    """How many subscribers ``iter_active`` would give now."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(subscribers.c.status == "active")).scalar_one())
