"""The send path at a million rows: ``deliveries.batch_id`` indexed only where a row
has a batch (the audience freeze no longer writes a million index entries for NULL).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HAS_BATCH = sa.text("batch_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_deliveries_batch_id", table_name="deliveries")
    op.create_index(
        "ix_deliveries_batch_id", "deliveries", ["batch_id"], sqlite_where=_HAS_BATCH, postgresql_where=_HAS_BATCH
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_batch_id", table_name="deliveries")
    op.create_index("ix_deliveries_batch_id", "deliveries", ["batch_id"])
