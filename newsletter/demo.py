"""The demo the README's main command runs: the whole weekly job once on the embedded
defaults (the bundled sample feeds at their as-of time, a SQLite database seeded with a
few demo subscribers, the outbox sender), all inside one folder.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from newsletter import weekly
from newsletter.config import OutboxBackend, Settings
from newsletter.store import subscribers
from newsletter.store.db import open_database, upgrade_database

SAMPLE_AS_OF = dt.datetime(2024, 10, 25, 21, 0, tzinfo=dt.UTC)  # the sample feeds' week
DEMO_SUBSCRIBERS = [
    ("ada@example.com", "Ada Lovelace"),
    ("grace@example.org", "Grace Hopper"),
    ("josé@example.es", "José Ñúñez"),
    ("bob@münchen.example", "Bob Müller"),
    ("zoe@example.net", "Zoë Ångström"),
]


@dataclass(frozen=True)
class DemoRun:
    report: weekly.WeekReport
    folder: Path
    outbox: Path
    added: int


def demo_settings(settings: Settings, folder: Path) -> Settings:
    """``settings`` with the issues, database and outbox moved into ``folder``."""
    folder = folder.resolve()
    return settings.model_copy(
        update={
            "issues_dir": folder / "issues",
            "output": settings.output.model_copy(update={"dir": folder / "build"}),
            "database": settings.database.model_copy(update={"url": f"sqlite:///{folder / 'newsletter.db'}"}),
            "delivery": settings.delivery.model_copy(
                update={"backend": "outbox", "outbox": OutboxBackend(dir=folder / "outbox")}
            ),
            "schedule": settings.schedule.model_copy(update={"mode": "auto"}),
        }
    )


def run_demo(settings: Settings, folder: Path) -> DemoRun:
    """Upgrade the demo database, seed the demo subscribers, run the weekly job once."""
    settings = demo_settings(settings, folder)
    folder.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings)
    engine = open_database(settings)
    try:
        added = 0
        for email, name in DEMO_SUBSCRIBERS:
            if subscribers.get(engine, email) is None:
                subscribers.add(engine, email, name=name, status="active", source="demo")
                added += 1
        report = weekly.run_week(settings, SAMPLE_AS_OF, engine=engine)
    finally:
        engine.dispose()
    return DemoRun(report, folder.resolve(), settings.delivery.outbox.dir, added)
