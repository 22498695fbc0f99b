"""The send path on PostgreSQL: ``ix_deliveries_send_id_state_id`` holds only the rows a
send still has to work on (pending, in flight, ambiguous). Marking a batch sent then
writes one index entry fewer a row (the settled row leaves the index instead of
getting a new entry), and the index stays the size of what is left to send. SQLite
keeps the whole index: its planner would not use the partial one for ``state =
'pending'``.

On a large ``deliveries`` table the new index takes a while to build and blocks writes
to the table meanwhile: upgrade between sends.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNSETTLED = sa.text("state IN ('pending', 'in_flight', 'ambiguous')")
_COLUMNS = ["send_id", "state", "id"]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_deliveries_send_id_state_id", table_name="deliveries")
    op.create_index("ix_deliveries_send_id_state_id", "deliveries", _COLUMNS, postgresql_where=_UNSETTLED)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_deliveries_send_id_state_id", table_name="deliveries")
    op.create_index("ix_deliveries_send_id_state_id", "deliveries", _COLUMNS)
