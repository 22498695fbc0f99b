"""Alembic migrations of the subscriber store, run by ``newsletter.store.db``."""
