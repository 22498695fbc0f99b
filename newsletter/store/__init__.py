"""The subscriber store: engine and migrations (``db``), tables, subscriber queries, CSV
import and export, and the audience stream the send job reads.

Everything takes an ``Engine`` from ``db.open_database(settings)``; nothing here prints.
"""
