"""Benchmark: `newsletter report ISSUE` for one issue sent to 1,000,000 recipients with
3,000,000 events, on SQLite or (``--postgres URL``) PostgreSQL.

    python bench/bench_report.py [--recipients 1000000] [--events 3000000] [--runs 5]
    python bench/bench_report.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

Seeds the ledger (one send, a delivery row per recipient) and the events (delivered,
processed, deferred, opens and clicks of per_subscriber tracking over 20 links and 72
hours, bounces hard and soft, drops, complaints, unsubscribes) with bulk inserts (SQLite
executemany, PostgreSQL COPY), ANALYZEs, then times the whole `newsletter report`
process ``--runs`` times and prints the median (and min/max), with the query plans
(``--explain``). Target (issue 14): <= 2 s on each engine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_send import _libpq, make_project  # noqa: E402

SLUG = "2024-10-25"
START = dt.datetime(2024, 10, 25, 9, 0)  # naive UTC, as both engines store it here
LINKS = [f"https://news.example.org/story-{n}?utm_source=newsletter" for n in range(20)]
# events per recipient of each kind (about 3 per recipient in all)
MIX = (
    ("delivered", 0.97),
    ("processed", 0.30),
    ("deferred", 0.10),
    ("open", 1.20),
    ("click", 0.40),
    ("bounce", 0.03),
    ("dropped", 0.005),
    ("spamreport", 0.001),
    ("unsubscribe", 0.004),
)


def events(recipients: int, total: int, rng: random.Random) -> Iterator[tuple[object, ...]]:
    """(sg_event_id, event, issue, batch_id, delivery_id, reason, bounce_type, occurred_at, received_at)."""
    weight = sum(share for _, share in MIX)
    n = 0
    for name, share in MIX:
        count = round(total * share / weight)
        # opens and clicks come from a part of the audience, several each
        readers = max(1, round(recipients * (0.45 if name == "open" else 0.15 if name == "click" else 1.0)))
        for _ in range(count):
            n += 1
            delivery = rng.randrange(readers) + 1
            hours = rng.expovariate(1 / 10) if name in ("open", "click") else rng.random()
            at = (START + dt.timedelta(hours=min(hours, 90))).isoformat(sep=" ", timespec="microseconds")
            reason = LINKS[min(int(rng.expovariate(1 / 3)), 19)] if name == "click" else None
            bounce = ("hard" if rng.random() < 0.66 else "soft") if name == "bounce" else None
            yield (f"e{n}", name, SLUG, f"b{delivery // 1000}", delivery, reason, bounce, at, at)


def seed(url: str, recipients: int, total: int) -> None:
    rng = random.Random(14)
    send = (1, SLUG, "Diplomacy Watch", recipients, START.isoformat(sep=" "), START.isoformat(sep=" "))
    deliveries = (
        (i, 1, i, "sent" if i % 200 else "rejected", f"b{i // 1000}", 1, None, None, None, None)
        for i in range(1, recipients + 1)
    )
    links = [(n + 1, SLUG, n, url_, f"Story {n}") for n, url_ in enumerate(LINKS)]
    tracked = (1, SLUG, "per_subscriber", "per_subscriber", "0" * 64, START.isoformat(sep=" "))
    columns = {
        "sends": "id, issue, subject, audience, created_at, finished_at",
        "deliveries": "id, send_id, subscriber_id, state, batch_id, attempts, claimed_at, settled_at, message_id, error",
        "webhook_events": "sg_event_id, event, issue, batch_id, delivery_id, reason, bounce_type, occurred_at, received_at",
        "tracked_links": "id, issue, position, url, label",
        "tracked_sends": "id, issue, clicks, opens, key, created_at",
    }
    rows = {
        "sends": [send],
        "deliveries": deliveries,
        "webhook_events": events(recipients, total, rng),
        "tracked_links": links,
        "tracked_sends": [tracked],
    }
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        db.execute("PRAGMA synchronous = OFF")
        for table, cols in columns.items():
            marks = ", ".join("?" * len(cols.split(",")))
            db.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows[table])
        db.commit()
        db.execute("ANALYZE")
        db.close()
        return
    import psycopg

    with psycopg.connect(_libpq(url)) as conn, conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        for table, cols in columns.items():
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                for row in rows[table]:
                    copy.write_row(row)
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # index-only scans need the visibility map


def explain(url: str) -> None:
    """The plans of the report's heaviest queries."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    prefix = "EXPLAIN QUERY PLAN" if url.startswith("sqlite") else "EXPLAIN"
    queries = [
        "SELECT state, count(*) FROM deliveries WHERE send_id = 1 GROUP BY state",
        "SELECT issue, event, bounce_type, count(*), count(DISTINCT delivery_id) FROM webhook_events "
        f"WHERE issue IN ('{SLUG}') GROUP BY issue, event, bounce_type",
        "SELECT reason, count(*), count(DISTINCT delivery_id) FROM webhook_events "
        f"WHERE issue = '{SLUG}' AND event = 'click' GROUP BY reason",
    ]
    with engine.connect() as conn:
        for query in queries:
            print(f"  {query[:90]}...")
            for row in conn.execute(text(f"{prefix} {query}")):
                print(f"    {row[-1]}")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--postgres", help="a PostgreSQL server URL (a fresh schema is used and dropped)")
    parser.add_argument("--explain", action="store_true", help="print the query plans")
    parser.add_argument("--keep", type=Path, help="seed into this folder and keep it (for profiling)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        config = make_project(folder, 0, "http://127.0.0.1:9", 1000, args.postgres)
        import yaml

        url = yaml.safe_load(config.read_text(encoding="utf-8"))["database"]["url"]
        started = time.perf_counter()
        seed(url, args.recipients, args.events)
        engine_name = "PostgreSQL" if args.postgres else "SQLite"
        print(
            f"{engine_name}: seeded {args.recipients:,} deliveries and {args.events:,} events in {time.perf_counter() - started:.1f} s"
        )
        if args.explain:
            explain(url)
        newsletter = str(Path(sys.executable).parent / "newsletter")
        command = [newsletter, "--config", str(config), "report", SLUG, "--format", "json"]
        walls = []
        for _ in range(args.runs + 1):  # the first warms the caches
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            walls.append(time.perf_counter() - start)
            if result.returncode != 0:
                raise SystemExit(f"report failed:\n{result.stderr}")
        counted = walls[1:]
        print(
            f"{engine_name}: newsletter report, {args.runs} runs: median {statistics.median(counted):.2f} s "
            f"(min {min(counted):.2f}, max {max(counted):.2f}); target <= 2 s"
        )
        floor = []
        for _ in range(args.runs):  # what any command costs: start-up, config, schema check
            start = time.perf_counter()
            subprocess.run([newsletter, "--config", str(config), "subscribers", "count"], capture_output=True)
            floor.append(time.perf_counter() - start)
        print(
            f"  for scale, `newsletter subscribers count` on the same database: median {statistics.median(floor):.2f} s"
        )
        from sqlalchemy import create_engine

        from newsletter import report

        engine = create_engine(url)
        report.issue_report(engine, SLUG)
        queries = []
        for _ in range(args.runs):
            start = time.perf_counter()
            report.issue_report(engine, SLUG)
            queries.append(time.perf_counter() - start)
        engine.dispose()
        print(f"  the report's queries alone (in-process): median {statistics.median(queries):.2f} s")
        import json

        figures = json.loads(result.stdout)
        print(f"  sent {figures['ledger']['sent']:,}, events {figures['engagement']}")


if __name__ == "__main__":
    main()
