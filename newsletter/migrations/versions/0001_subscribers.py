"""The subscribers table.

Revision ID: 0001
Revises:
Create Date: 2024-10-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "subscribers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("email_key", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200), server_default="", nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("updated_at", _WHEN, nullable=False),
        sa.Column("confirmed_at", _WHEN, nullable=True),
        sa.Column("unsubscribed_at", _WHEN, nullable=True),
        sa.Column("source", sa.String(200), server_default="", nullable=False),
        sa.Column("consent_at", _WHEN, nullable=True),
        sa.Column("consent_ip", sa.String(45), nullable=True),
        sa.Column("consent_user_agent", sa.String(500), nullable=True),
        sa.Column("consent_form", sa.String(200), nullable=True),
        sa.Column("attributes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("confirmation_hash", sa.String(64), nullable=True),
        sa.Column("confirmation_expires_at", _WHEN, nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'active', 'unsubscribed', 'bounced', 'complained')",
            name="ck_subscribers_status",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_subscribers"),
        sa.UniqueConstraint("email_key", name="uq_subscribers_email_key"),
        sa.UniqueConstraint("token", name="uq_subscribers_token"),
    )
    op.create_index("ix_subscribers_status_id", "subscribers", ["status", "id"])
    op.create_index(
        "ix_subscribers_confirmation_hash",
        "subscribers",
        ["confirmation_hash"],
        unique=True,
        sqlite_where=sa.text("confirmation_hash IS NOT NULL"),
        postgresql_where=sa.text("confirmation_hash IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_subscribers_confirmation_hash", table_name="subscribers")
    op.drop_index("ix_subscribers_status_id", table_name="subscribers")
    op.drop_table("subscribers")
