"""The issue report and tracking: a covering index on ``webhook_events`` for the report
(per event, per link, per hour), ``tracked_sends`` (an issue's tracking modes and signing key) and
``tracked_links`` (a sent issue's links in order, with their labels).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.drop_index("ix_webhook_events_issue_event", table_name="webhook_events")
    op.create_index(
        "ix_webhook_events_report",
        "webhook_events",
        ["issue", "event", "occurred_at", "reason", "delivery_id", "bounce_type"],
    )
    op.create_table(
        "tracked_sends",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("issue", sa.String(80), nullable=False),
        sa.Column("clicks", sa.String(16), nullable=False),
        sa.Column("opens", sa.String(16), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tracked_sends"),
        sa.UniqueConstraint("issue", name="uq_tracked_sends_issue"),
    )
    op.create_table(
        "tracked_links",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("issue", sa.String(80), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("label", sa.String(200), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tracked_links"),
    )
    op.create_index("ix_tracked_links_issue_position", "tracked_links", ["issue", "position"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_tracked_links_issue_position", table_name="tracked_links")
    op.drop_table("tracked_links")
    op.drop_table("tracked_sends")
    op.drop_index("ix_webhook_events_report", table_name="webhook_events")
    op.create_index("ix_webhook_events_issue_event", "webhook_events", ["issue", "event"])
