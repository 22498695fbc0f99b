"""Alembic environment: runs on the connection ``newsletter.store.db`` hands over.

Developers running the ``alembic`` command directly pass ``-x url=...`` instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from newsletter.store.tables import metadata

config = context.config


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them on a database")

given = config.attributes.get("connection")
if given is not None:
    run_migrations(given)
else:
    from newsletter.store.db import create_store_engine

    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("give the database: alembic -x url=sqlite:///dev.db ...")
    engine = create_store_engine(url)
    with engine.connect() as connection:
        run_migrations(connection)
    engine.dispose()
