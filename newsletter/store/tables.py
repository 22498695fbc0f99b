"""The database tables (SQLAlchemy Core): subscribers, their consents and suppressions, the send ledger
(sends, deliveries, send_batches), the SendGrid webhook's events and the welcome mails.

The Alembic migrations in ``newsletter/migrations`` create exactly these; a test compares
the two. Timestamps are stored in UTC and always come back timezone-aware.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

STATUSES: Final = ("pending", "active", "unsubscribed", "bounced", "complained")
OPTED_OUT: Final = frozenset({"unsubscribed", "bounced", "complained"})


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone itself)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give a timezone")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # type: ignore[no-any-return]
        return value.astimezone(dt.UTC)  # type: ignore[no-any-return]


Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER only
Attributes = JSON().with_variant(JSONB(), "postgresql")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False),  # as given
    Column("email_key", String(320), nullable=False, unique=True),  # see addresses.email_key
    Column("name", String(200), nullable=False, server_default=""),
    Column("status", String(16), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("confirmed_at", UtcDateTime()),
    Column("unsubscribed_at", UtcDateTime()),
    Column("source", String(200), nullable=False, server_default=""),
    # consent: how and when a web sign-up agreed (GDPR art. 7(1): be able to show it)
    Column("consent_at", UtcDateTime()),
    Column("consent_ip", String(45)),
    Column("consent_user_agent", String(500)),
    Column("consent_form", String(200)),
    Column("attributes", Attributes, nullable=False),
    # unsubscribe links carry this; generated once, never changed
    Column("token", String(64), nullable=False, unique=True),
    # double opt-in: a SHA-256 of the emailed token, valid until the expiry
    Column("confirmation_hash", String(64)),
    Column("confirmation_expires_at", UtcDateTime()),
    # the reader paused delivery on the preferences page: no issue is frozen for them
    # before this moment (see audience.receiving)
    Column("paused_until", UtcDateTime()),
    CheckConstraint(
        "status IN ('pending', 'active', 'unsubscribed', 'bounced', 'complained')",
        name="status",
    ),
    Index("ix_subscribers_status_id", "status", "id"),  # the audience stream's key
    # partial: a million imported rows add nothing to it
    Index(
        "ix_subscribers_confirmation_hash",
        "confirmation_hash",
        unique=True,
        sqlite_where=text("confirmation_hash IS NOT NULL"),
        postgresql_where=text("confirmation_hash IS NOT NULL"),
    ),
)

# Every web sign-up's consent, in order (GDPR art. 7(1)): the subscriber's consent_*
# columns keep the first one and a later sign-up never overwrites them. A row is
# confirmed when its emailed link is followed; one never confirmed is forgotten when its
# link expires. Erasing a subscriber erases these rows with it.
consents = Table(
    "consents",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column(
        "subscriber_id",
        Id,
        ForeignKey("subscribers.id", ondelete="CASCADE", name="fk_consents_subscriber_id_subscribers"),
        nullable=False,
    ),
    Column("at", UtcDateTime(), nullable=False),
    Column("ip", String(45)),
    Column("user_agent", String(500)),
    Column("form", String(200)),
    Column("name", String(200), nullable=False, server_default=""),  # as typed; applied on confirmation
    Column("expires_at", UtcDateTime(), nullable=False),  # when its confirmation link expires
    Column("confirmed_at", UtcDateTime()),
    Index("ix_consents_subscriber_id_at", "subscriber_id", "at"),
    Index("ix_consents_expires_at", "expires_at"),
)

suppressions = Table(
    "suppressions",
    metadata,
    # suppression_hash() of the email_key: a removed address is not kept in clear
    Column("email_hash", String(64), primary_key=True),
    Column("reason", String(32), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# --- the send ledger (see newsletter/store/ledger.py) ---------------------------------

sends = Table(
    "sends",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("issue", String(80), nullable=False, unique=True),  # the slug
    Column("subject", String(300), nullable=False),
    Column("audience", Integer, nullable=False),  # rows frozen into deliveries
    Column("created_at", UtcDateTime(), nullable=False),
    Column("finished_at", UtcDateTime()),
    # SHA-256 of the rendered email when the audience was frozen: a later send of a
    # changed issue is refused (see send.content_hash)
    Column("content_hash", String(64)),
    Column("gave_up_at", UtcDateTime()),  # the scheduler stopped resuming it and said so
)

# PostgreSQL leaves this share of each ``deliveries`` page empty at the freeze: room for
# the row versions a claim and a settle write beside the row (see the indexes below).
DELIVERIES_FILLFACTOR: Final = 50

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("send_id", Id, nullable=False),
    # no foreign key: erasing a subscriber must not erase the record that a send happened
    Column("subscriber_id", Id, nullable=False),
    Column("state", String(16), nullable=False),
    Column("batch_id", String(32)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("claimed_at", UtcDateTime()),
    Column("settled_at", UtcDateTime()),
    Column("message_id", String(200)),
    Column("error", String(500)),
    CheckConstraint("state IN ('pending', 'in_flight', 'ambiguous', 'sent', 'rejected', 'skipped')", name="state"),
    Index("ix_deliveries_send_id_subscriber_id", "send_id", "subscriber_id", unique=True),
    # SQLite: claiming, and the unsettled rows of a send, through (send_id, state, id).
    Index("ix_deliveries_send_id_state_id", "send_id", "state", "id").ddl_if(dialect="sqlite"),
    # PostgreSQL: no index names a column that marking a row sent writes (state,
    # settled_at, message_id, error), so that update is a heap-only (HOT) one: the new
    # row version goes on the same page (the table keeps half of each page free for it,
    # ``fillfactor``) and no index gets an entry, which halves the server's work a batch
    # (migration 0012). Claims find the unclaimed rows by ``batch_id IS NULL`` (a row is
    # pending exactly when it has no batch), ambiguous rows through the batches flagged
    # ``send_batches.ambiguous``.
    Index("ix_deliveries_unclaimed", "send_id", "id", postgresql_where=text("batch_id IS NULL")).ddl_if(
        dialect="postgresql"
    ),
    # partial: a frozen row has no batch yet, and a million of them cost the freeze
    # a million index entries nobody looks up
    Index(
        "ix_deliveries_batch_id",
        "batch_id",
        sqlite_where=text("batch_id IS NOT NULL"),
        postgresql_where=text("batch_id IS NOT NULL"),
    ),
    postgresql_with={"fillfactor": DELIVERIES_FILLFACTOR},
)

# A claimed batch: its owner (one sending process) renews the lease while it works; a
# batch whose lease ran out belonged to a process that died, and its rows are ambiguous.
send_batches = Table(
    "send_batches",
    metadata,
    Column("batch_id", String(32), primary_key=True),
    Column("send_id", Id, nullable=False),
    Column("owner", String(200), nullable=False),  # host:pid:random, see batches.new_owner
    Column("state", String(16), nullable=False),
    Column("claimed_at", UtcDateTime(), nullable=False),
    Column("lease_until", UtcDateTime(), nullable=False),
    Column("reason", String(500)),
    # some of its rows were made ambiguous (set with them, never cleared): where the
    # webhook, reconcile and an operator look for ambiguous rows (see deliveries)
    Column("ambiguous", Boolean, nullable=False, server_default=false()),
    # the fencing token: 1 at the claim, incremented by every takeover (lease expiry, an
    # operator's settle); the owner proves it at every write and before every request
    Column("generation", Integer, nullable=False, server_default="1"),
    CheckConstraint("state IN ('in_flight', 'done', 'expired')", name="state"),
    Index("ix_send_batches_send_id_state", "send_id", "state"),
    Index("ix_send_batches_owner_state", "owner", "state"),
)

# --- SendGrid event webhook: applied once per sg_event_id ------------------------------

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("sg_event_id", String(100), primary_key=True),
    Column("event", String(32), nullable=False),
    Column("issue", String(80)),  # from custom_args
    Column("batch_id", String(32)),
    Column("subscriber_id", Id),  # when the address is a known subscriber
    Column("delivery_id", Id),  # the ledger row, from custom_args (reconciliation)
    Column("reason", String(500)),
    Column("bounce_type", String(8)),  # "hard" or "soft" for a bounce, else NULL
    Column("occurred_at", UtcDateTime()),
    Column("received_at", UtcDateTime(), nullable=False),
    # the issue report reads this index and never the table (covering, see report.py):
    # counts per event and bounce type, clicks per link (a click's URL is its reason),
    # distinct readers, the hours of opens and clicks
    # (occurred_at third: the chart counts each hour as one index range)
    Index("ix_webhook_events_report", "issue", "event", "occurred_at", "reason", "delivery_id", "bounce_type"),
    # SQLite: an issue's distinct openers and clickers read in order, without the temporary
    # B-tree that count(DISTINCT) builds over a million readers (0.88 s -> 0.12 s at 1.6M
    # opens and clicks; migration 0013). PostgreSQL's count(DISTINCT) sorts its input
    # whatever the index, so it is not built there.
    Index("ix_webhook_events_readers", "issue", "event", "delivery_id").ddl_if(dialect="sqlite"),
    Index("ix_webhook_events_delivery_id", "delivery_id"),
    Index("ix_webhook_events_batch_id", "batch_id"),
    # partial: a subscriber's soft bounces, counted against bounces.soft_limit
    Index(
        "ix_webhook_events_soft_bounces",
        "subscriber_id",
        sqlite_where=text("bounce_type = 'soft'"),
        postgresql_where=text("bounce_type = 'soft'"),
    ),
)

# --- welcome mails: one per subscriber, after their sign-up is confirmed -----------------

WELCOME_STATES: Final = ("sending", "sent", "failed")

welcomes = Table(
    "welcomes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # SET NULL on erasure: the count of welcomes sent survives, the person does not
    Column(
        "subscriber_id",
        Id,
        ForeignKey("subscribers.id", ondelete="SET NULL", name="fk_welcomes_subscriber_id_subscribers"),
    ),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("sent_at", UtcDateTime()),
    Column("error", String(500)),
    CheckConstraint("state IN ('sending', 'sent', 'failed')", name="state"),
    Index("ix_welcomes_subscriber_id", "subscriber_id", unique=True),
    Index("ix_welcomes_state_sent_at", "state", "sent_at"),
)

# --- tracking (see newsletter/tracking.py) -------------------------------------------

# One row per sent issue with tracking: the modes it was sent with and the key that
# signs its redirect and pixel tokens (random per issue, never shown).
tracked_sends = Table(
    "tracked_sends",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("issue", String(80), nullable=False, unique=True),
    Column("clicks", String(16), nullable=False),
    Column("opens", String(16), nullable=False),
    Column("key", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# The links of a sent issue, in the email's order, with their label text: the report's
# clicks per link, and the only URLs the redirect (/r/...) leads to.
tracked_links = Table(
    "tracked_links",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("issue", String(80), nullable=False),
    Column("position", Integer, nullable=False),
    Column("url", String(2000), nullable=False),
    Column("label", String(200), nullable=False, server_default=""),
    Index("ix_tracked_links_issue_position", "issue", "position", unique=True),
)
