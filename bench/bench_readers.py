"""Benchmark: what a reader's actions cost the server.

    python bench/bench_readers.py [--runs 20]

1. the welcome mail: render + inline + text + checks (``welcome.build_welcome``) and
   the MIME message for one recipient, median of N (the first, cold build apart);
2. /archive/feed.xml with 20 sent issues: the first request (20 builds), then a cached
   one (nothing changed), median of N;
3. the audience freeze of 100,000 subscribers (10,000 paused) on SQLite, with the pause
   filter, median of 3.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ISSUE = ROOT / "issues" / "2024-10-25.yaml"


def welcome_build(runs: int) -> tuple[float, float]:
    from newsletter import issuefile, render, welcome
    from newsletter.config import load_settings

    settings = load_settings(ROOT / "config.yaml", env={})
    latest = issuefile.load(ISSUE)
    recipient = render.sample_recipient(settings)

    def once() -> float:
        start = time.perf_counter()
        built = welcome.build_welcome(settings, latest, dt.date.today())
        render.personalize(built.email, recipient).as_bytes()
        return time.perf_counter() - start

    cold = once()
    return cold, statistics.median(once() for _ in range(runs))


def feed(runs: int) -> tuple[float, float]:
    from newsletter import issuefile
    from newsletter.config import load_settings
    from newsletter.web.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        shutil.copytree(ROOT / "templates", project / "templates")
        shutil.copy(ROOT / "config.yaml", project / "config.yaml")
        (project / "issues").mkdir()
        base = issuefile.load(ISSUE)
        for n in range(20):
            day = base.date - dt.timedelta(weeks=n)
            issue = base.model_copy(update={"slug": day.isoformat(), "date": day, "status": "sent"})
            issuefile.save(issue, issuefile.path_for(project / "issues", issue.slug))
        settings = load_settings(project / "config.yaml", env={})
        client = TestClient(create_app(settings, secret="b" * 40), base_url="http://127.0.0.1:8000")
        start = time.perf_counter()
        assert client.get("/archive/feed.xml").status_code == 200
        first = time.perf_counter() - start
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            client.get("/archive/feed.xml")
            times.append(time.perf_counter() - start)
        return first, statistics.median(times)


def freeze(subscribers_count: int = 100_000, paused: int = 10_000) -> float:
    from sqlalchemy import insert, update

    from newsletter.store import ledger
    from newsletter.store.db import create_store_engine, upgrade
    from newsletter.store.tables import subscribers

    now = dt.datetime.now(dt.UTC)
    times = []
    for run in range(3):
        with tempfile.TemporaryDirectory() as tmp:
            engine = create_store_engine(f"sqlite:///{tmp}/bench.db")
            upgrade(engine)
            rows = [
                {
                    "email": f"r{n}@example.org",
                    "email_key": f"r{n}@example.org",
                    "status": "active",
                    "created_at": now,
                    "updated_at": now,
                    "attributes": {},
                    "token": f"t{run}-{n:08d}" + "x" * 30,
                }
                for n in range(subscribers_count)
            ]
            with engine.begin() as conn:
                conn.execute(insert(subscribers), rows)
                conn.execute(
                    update(subscribers)
                    .where(subscribers.c.id <= paused)
                    .values(paused_until=now + dt.timedelta(weeks=2))
                )
            start = time.perf_counter()
            send, _ = ledger.start_send(engine, "bench", "Bench", now=now)
            times.append(time.perf_counter() - start)
            assert send.audience == subscribers_count - paused
            engine.dispose()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    cold, warm = welcome_build(args.runs)
    print(f"welcome mail build + MIME: cold {cold * 1000:.0f} ms, median {warm * 1000:.1f} ms ({args.runs} runs)")
    first, cached = feed(args.runs)
    print(f"/archive/feed.xml, 20 issues: first {first:.2f} s, cached median {cached * 1000:.1f} ms")
    print(f"freeze 100,000 subscribers (10,000 paused), SQLite: median {freeze():.2f} s (3 runs)")


if __name__ == "__main__":
    main()
