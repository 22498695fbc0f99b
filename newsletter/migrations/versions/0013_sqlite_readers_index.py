"""SQLite: ``ix_webhook_events_readers`` (issue, event, delivery_id), so the report counts an
issue's distinct openers and clickers by reading the index in order (see
``tables.webhook_events``). Not on PostgreSQL, whose count(DISTINCT) sorts anyway.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.create_index("ix_webhook_events_readers", "webhook_events", ["issue", "event", "delivery_id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_webhook_events_readers", table_name="webhook_events")
