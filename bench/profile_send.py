"""Where a send's time goes: one in-process send of N recipients through the SendGrid
backend to the local sink (bench/sendgrid_sink.py), with the ledger on SQLite or
PostgreSQL, printing

- wall time, this process's CPU (Python), the PostgreSQL backends' CPU (read from
  /proc: the server runs on this machine) and the sink's CPU: on a shared machine CPU
  seconds say more than wall time;
- every statement the send ran, with its count and time, and the round trips per
  batch (statements + BEGIN/COMMIT + connection checks);
- with ``--cprofile``, the worker threads' hottest functions.

    .venv/bin/python bench/profile_send.py -n 100000 --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/profile_send.py -n 100000 --cprofile           # SQLite

The duplicates and losses the sink recorded are printed too (both must be 0).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_import import _cpu_seconds  # noqa: E402
from bench.bench_send import make_project  # noqa: E402
from bench.sendgrid_sink import start_sink  # noqa: E402


class Counter:
    """Statements, transactions and connection checkouts of one engine, with times."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.count: collections.Counter[str] = collections.Counter()
        self.seconds: collections.Counter[str] = collections.Counter()
        self.round_trips = 0
        self.backends: list[int] = []
        event.listen(engine, "connect", self._connect)
        event.listen(engine, "checkout", self._checkout)
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "begin", self._transaction)
        event.listen(engine, "commit", self._transaction)
        event.listen(engine, "rollback", self._transaction)
        self.postgres = engine.dialect.name == "postgresql"

    def _connect(self, dbapi_connection: Any, _record: Any) -> None:
        if self.postgres:
            self.backends.append(dbapi_connection.info.backend_pid)

    def _checkout(self, *_args: Any) -> None:
        self.round_trips += 1  # pool_pre_ping: one SELECT 1 a checkout

    def _transaction(self, _conn: Any) -> None:
        self.round_trips += 1

    def _before(self, conn: Any, *_args: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def _after(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        key = " ".join(statement.split())[:100]
        self.count[key] += 1
        self.seconds[key] += time.perf_counter() - conn.info.pop("bench_started", time.perf_counter())
        self.round_trips += 1

    def server_cpu(self) -> float:
        return sum(_cpu_seconds(pid) for pid in self.backends)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--subscribers", type=int, default=100_000)
    parser.add_argument("--postgres", metavar="URL", help="the ledger on this PostgreSQL server (a fresh schema)")
    parser.add_argument("--cprofile", action="store_true", help="profile the worker threads")
    args = parser.parse_args()
    os.environ.setdefault("SENDGRID_API_KEY", "SG.bench-key")

    from newsletter import send
    from newsletter.config import load_settings
    from newsletter.store.db import open_database

    profiles: list[cProfile.Profile] = []
    if args.cprofile:
        worker = send._Run.worker

        def profiled(self: Any) -> None:
            profile = cProfile.Profile()
            profiles.append(profile)
            profile.enable()
            try:
                worker(self)
            finally:
                profile.disable()

        send._Run.worker = profiled  # type: ignore[method-assign]

    with tempfile.TemporaryDirectory() as tmp, start_sink(record=True) as sink:
        config = make_project(Path(tmp), args.subscribers, sink.url, 1000, args.postgres)
        settings = load_settings(config)
        engine = open_database(settings)
        engine.dispose()  # the counter sees every connection from the start
        counter = Counter(engine)
        load = os.getloadavg()
        sink_before = _cpu_seconds(sink.process.pid)
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        summary = send.send_issue(settings, config.parent / "issues/2024-10-25.yaml", engine=engine)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        server = counter.server_cpu()
        sink_cpu = _cpu_seconds(sink.process.pid) - sink_before
        stats = sink.stats()
        engine.dispose()
    python = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    batches = max(1, stats["requests"])
    lost = args.subscribers - stats["recipients"]
    print(
        f"{'PostgreSQL' if args.postgres else 'SQLite'}, {args.subscribers:,} recipients, load average "
        f"{' '.join(f'{x:.2f}' for x in load)} ({os.cpu_count()} CPUs)\n"
        f"wall {wall:.2f} s ({args.subscribers / wall:,.0f}/s); CPU: Python {python:.2f} s"
        + (f", PostgreSQL {server:.2f} s" if args.postgres else "")
        + f", sink {sink_cpu:.2f} s; peak {after.ru_maxrss / 1024:.0f} MB\n"
        f"sent {summary.sent:,}; sink: {stats['requests']:,} requests, {stats['duplicates']:,} duplicates, "
        f"{lost:,} lost\n"
        f"round trips to the database: {counter.round_trips:,} ({counter.round_trips / batches:.1f} a batch of 1,000)"
    )
    print(f"{'count':>7} {'a batch':>7} {'seconds':>8}  statement")
    for statement, count in counter.count.most_common(20):
        print(f"{count:>7,} {count / batches:>7.2f} {counter.seconds[statement]:>8.2f}  {statement}")
    if profiles:
        stats_all = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats_all.add(profile)
        stats_all.sort_stats("tottime").print_stats(30)
    return 0 if stats["duplicates"] == 0 and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
