"""The audience the send job reads: active subscribers whose delivery is not paused
(``receiving``), streamed in batches by id (keyset pagination), so a million
subscribers never sit in memory at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Engine, and_, func, or_, select

from newsletter.store.tables import subscribers


@dataclass(frozen=True, slots=True)
class AudienceMember:
    """What one message needs: who (id, email, name) and the unsubscribe token."""

    id: int
    email: str
    name: str
    token: str


def receiving(now: dt.datetime) -> ColumnElement[bool]:
    """Who gets an issue frozen at ``now``: active, and not pausing delivery (a pause
    ends at ``paused_until``). The one definition the freeze and these readers share."""
    return and_(
        subscribers.c.status == "active",
        or_(subscribers.c.paused_until.is_(None), subscribers.c.paused_until <= now),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iter_active(
    engine: Engine, batch_size: int = 1000, *, after_id: int = 0, now: dt.datetime | None = None
) -> Iterator[list[AudienceMember]]:
    """Receiving subscribers (see ``receiving``) in ascending id, ``batch_size`` at a time.

    Each batch is its own short read, so nothing holds a transaction (or SQLite's WAL)
    open while the caller sends; someone who unsubscribes between two batches is not in
    the later ones. ``after_id`` resumes after a given subscriber.
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    query = select(subscribers.c.id, subscribers.c.email, subscribers.c.name, subscribers.c.token).where(
        receiving(now or _now())
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


def count_active(engine: Engine, now: dt.datetime | None = None) -> int:
    """How many subscribers ``iter_active`` would give now."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(receiving(now or _now()))).scalar_one())
