"""Readers' self-service and the welcome mail: ``subscribers.paused_until`` (delivery
paused from the preferences page) and ``welcomes`` (one welcome mail per subscriber,
its state and when it was sent, counted in the issue report).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("paused_until", _WHEN))
    op.create_table(
        "welcomes",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("subscriber_id", _ID),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("sent_at", _WHEN),
        sa.Column("error", sa.String(500)),
        sa.CheckConstraint("state IN ('sending', 'sent', 'failed')", name="ck_welcomes_state"),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["subscribers.id"], ondelete="SET NULL", name="fk_welcomes_subscriber_id_subscribers"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_welcomes"),
    )
    op.create_index("ix_welcomes_subscriber_id", "welcomes", ["subscriber_id"], unique=True)
    op.create_index("ix_welcomes_state_sent_at", "welcomes", ["state", "sent_at"])


def downgrade() -> None:
    op.drop_index("ix_welcomes_state_sent_at", table_name="welcomes")
    op.drop_index("ix_welcomes_subscriber_id", table_name="welcomes")
    op.drop_table("welcomes")
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("paused_until")
