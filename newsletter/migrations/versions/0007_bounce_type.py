"""Bounces told apart: ``webhook_events.bounce_type`` is ``hard`` for a permanent
failure (SendGrid's ``bounce``, a DSN with a 5.x.x status) and ``soft`` for a temporary
one (SendGrid's ``blocked``, a 4.x.x DSN); NULL for other events.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(sa.Column("bounce_type", sa.String(8)))


def downgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("bounce_type")
