"""A partial index on a subscriber's soft bounces (``webhook_events.bounce_type = 'soft'``):
each soft bounce, from SendGrid or from a DSN, counts those of the last
``bounces.soft_window_days`` against ``bounces.soft_limit``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_webhook_events_soft_bounces",
        "webhook_events",
        ["subscriber_id"],
        sqlite_where=sa.text("bounce_type = 'soft'"),
        postgresql_where=sa.text("bounce_type = 'soft'"),
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_events_soft_bounces", table_name="webhook_events")
