"""``send_batches.generation``: the batch's fencing token. A claim starts it at 1; every
takeover (lease expiry, an operator's settle) increments it, and its owner proves the
number it claimed with at every ledger write and before every request (see
``ledger.Fence``).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("send_batches") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("send_batches") as batch:
        batch.drop_column("generation")
