"""Exactly-once sending: an ``ambiguous`` delivery state, batches with owners and leases
(``send_batches``), the content hash pinned when the audience was frozen, and the ledger
row each webhook event names (``webhook_events.delivery_id``) for reconciliation.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)
_OLD_STATES = "state IN ('pending', 'in_flight', 'sent', 'rejected', 'skipped')"
_NEW_STATES = "state IN ('pending', 'in_flight', 'ambiguous', 'sent', 'rejected', 'skipped')"


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint("ck_deliveries_state", type_="check")
        batch.create_check_constraint("ck_deliveries_state", sa.text(_NEW_STATES))
    with op.batch_alter_table("sends") as batch:
        batch.add_column(sa.Column("content_hash", sa.String(64)))
        batch.add_column(sa.Column("gave_up_at", _WHEN))
    op.create_table(
        "send_batches",
        sa.Column("batch_id", sa.String(32), nullable=False),
        sa.Column("send_id", _ID, nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claimed_at", _WHEN, nullable=False),
        sa.Column("lease_until", _WHEN, nullable=False),
        sa.Column("reason", sa.String(500)),
        sa.CheckConstraint("state IN ('in_flight', 'done', 'expired')", name="ck_send_batches_state"),
        sa.PrimaryKeyConstraint("batch_id", name="pk_send_batches"),
    )
    op.create_index("ix_send_batches_send_id_state", "send_batches", ["send_id", "state"])
    op.create_index("ix_send_batches_owner_state", "send_batches", ["owner", "state"])
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(sa.Column("delivery_id", _ID))
    op.create_index("ix_webhook_events_delivery_id", "webhook_events", ["delivery_id"])
    op.create_index("ix_webhook_events_batch_id", "webhook_events", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_batch_id", table_name="webhook_events")
    op.drop_index("ix_webhook_events_delivery_id", table_name="webhook_events")
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("delivery_id")
    op.drop_index("ix_send_batches_owner_state", table_name="send_batches")
    op.drop_index("ix_send_batches_send_id_state", table_name="send_batches")
    op.drop_table("send_batches")
    with op.batch_alter_table("sends") as batch:
        batch.drop_column("gave_up_at")
        batch.drop_column("content_hash")
    op.execute("UPDATE deliveries SET state = 'in_flight' WHERE state = 'ambiguous'")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint("ck_deliveries_state", type_="check")
        batch.create_check_constraint("ck_deliveries_state", sa.text(_OLD_STATES))
