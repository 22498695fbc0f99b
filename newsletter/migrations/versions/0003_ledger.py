"""The send ledger (sends, deliveries) and the SendGrid webhook's processed events.

Revision ID: 0003
Revises: 0002
Create Date: 2024-10-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sends",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("issue", sa.String(80), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("audience", sa.Integer(), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("finished_at", _WHEN),
        sa.PrimaryKeyConstraint("id", name="pk_sends"),
        sa.UniqueConstraint("issue", name="uq_sends_issue"),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("send_id", _ID, nullable=False),
        sa.Column("subscriber_id", _ID, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("batch_id", sa.String(32)),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("claimed_at", _WHEN),
        sa.Column("settled_at", _WHEN),
        sa.Column("message_id", sa.String(200)),
        sa.Column("error", sa.String(500)),
        sa.CheckConstraint(
            "state IN ('pending', 'in_flight', 'sent', 'rejected', 'skipped')", name="ck_deliveries_state"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
    )
    op.create_index("ix_deliveries_send_id_subscriber_id", "deliveries", ["send_id", "subscriber_id"], unique=True)
    op.create_index("ix_deliveries_send_id_state_id", "deliveries", ["send_id", "state", "id"])
    op.create_index("ix_deliveries_batch_id", "deliveries", ["batch_id"])
    op.create_table(
        "webhook_events",
        sa.Column("sg_event_id", sa.String(100), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("issue", sa.String(80)),
        sa.Column("batch_id", sa.String(32)),
        sa.Column("subscriber_id", _ID),
        sa.Column("reason", sa.String(500)),
        sa.Column("occurred_at", _WHEN),
        sa.Column("received_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("sg_event_id", name="pk_webhook_events"),
    )
    op.create_index("ix_webhook_events_issue_event", "webhook_events", ["issue", "event"])


def downgrade() -> None:
    op.drop_table("webhook_events")
    op.drop_index("ix_deliveries_batch_id", table_name="deliveries")
    op.drop_index("ix_deliveries_send_id_state_id", table_name="deliveries")
    op.drop_index("ix_deliveries_send_id_subscriber_id", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_table("sends")
