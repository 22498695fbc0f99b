"""Consent history: every web sign-up's consent in ``consents`` (the subscriber's own
consent columns keep the first one), with the consents already recorded copied in.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "consents",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("subscriber_id", _ID, nullable=False),
        sa.Column("at", _WHEN, nullable=False),
        sa.Column("ip", sa.String(45)),
        sa.Column("user_agent", sa.String(500)),
        sa.Column("form", sa.String(200)),
        sa.Column("name", sa.String(200), server_default="", nullable=False),
        sa.Column("expires_at", _WHEN, nullable=False),
        sa.Column("confirmed_at", _WHEN),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["subscribers.id"], ondelete="CASCADE", name="fk_consents_subscriber_id_subscribers"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_consents"),
    )
    op.create_index("ix_consents_subscriber_id_at", "consents", ["subscriber_id", "at"])
    op.create_index("ix_consents_expires_at", "consents", ["expires_at"])
    # the consents recorded so far: confirmed with the subscriber, or pending until their link expires
    op.execute(
        "INSERT INTO consents (subscriber_id, at, ip, user_agent, form, name, expires_at, confirmed_at) "
        "SELECT id, consent_at, consent_ip, consent_user_agent, consent_form, '', "
        "COALESCE(confirmation_expires_at, consent_at), confirmed_at "
        "FROM subscribers WHERE consent_at IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_consents_expires_at", table_name="consents")
    op.drop_index("ix_consents_subscriber_id_at", table_name="consents")
    op.drop_table("consents")
