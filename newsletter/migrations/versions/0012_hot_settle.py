"""Marking a batch sent on PostgreSQL without index writes: ``send_batches.ambiguous``
flags the batches with ambiguous rows (both engines; set for those that have some now),
and on PostgreSQL ``deliveries`` loses its index on ``state`` (``ix_deliveries_send_id_state_id``)
for ``ix_deliveries_unclaimed`` (``send_id, id`` of the rows without a batch, which are
the pending ones) and keeps half of each new page free (``fillfactor`` 50). No index
then names a column the settle writes, so PostgreSQL updates the row on its page
(heap-only tuple) instead of adding an entry to every index: about 40% less server
work a batch (bench/explain_send.py, bench/bench_send.py --postgres).

The fillfactor applies to pages written from now on (the next freeze); rows already in
the table stay as they are. Building the new index blocks writes to ``deliveries`` for
a while on a large table: upgrade between sends.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNSETTLED = sa.text("state IN ('pending', 'in_flight', 'ambiguous')")


def upgrade() -> None:
    op.add_column("send_batches", sa.Column("ambiguous", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.execute(
        "UPDATE send_batches SET ambiguous = true WHERE batch_id IN "
        "(SELECT batch_id FROM deliveries WHERE state = 'ambiguous')"
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    # a pending row has no batch (release and an operator's "send again" clear it): the
    # new index finds them by that
    op.execute("UPDATE deliveries SET batch_id = NULL WHERE state = 'pending' AND batch_id IS NOT NULL")
    op.drop_index("ix_deliveries_send_id_state_id", table_name="deliveries")
    op.create_index(
        "ix_deliveries_unclaimed", "deliveries", ["send_id", "id"], postgresql_where=sa.text("batch_id IS NULL")
    )
    op.execute("ALTER TABLE deliveries SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE deliveries RESET (fillfactor)")
        op.drop_index("ix_deliveries_unclaimed", table_name="deliveries")
        op.create_index(
            "ix_deliveries_send_id_state_id", "deliveries", ["send_id", "state", "id"], postgresql_where=_UNSETTLED
        )
    op.drop_column("send_batches", "ambiguous")
