"""Benchmark: sending an issue to N active subscribers through the SendGrid backend,
pointed at a minimal local sink (bench/sendgrid_sink.py), with the ledger on SQLite or
(``--postgres URL``) PostgreSQL.

    python bench/bench_send.py [--subscribers 1000000] [--also 100000] [--single 3000]
    python bench/bench_send.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

Each send runs as a real `newsletter send` process (so its peak memory is its own, read
from the kernel's ru_maxrss): wall time, recipients a second and peak memory, for N and
for a smaller list (constant memory: the two peaks should be within 20%). `--single`
measures sending one request per recipient (batch_size 1) to report the speed-up.
Targets (issue 5): 1,000,000 in <= 30 s, <= 150 MB peak.

    python bench/bench_send.py --postgres URL --processes 2

runs the send of 1,000,000 as one process, then as N `newsletter send` processes started
together on the same issue and database (the scale-out design: batches claimed with
``FOR UPDATE SKIP LOCKED``), and reports wall time, recipients a second, each process's
peak memory, and the duplicates and losses counted from the recipients the sink
recorded. Targets (issue 15): one process <= 30 s and <= 150 MB; N processes faster
than one, 0 duplicates, 0 lost. On a shared machine, repeat and take medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sendgrid_sink import start_sink  # noqa: E402


def make_project(folder: Path, subscribers: int, sink_url: str, batch_size: int, postgres: str | None = None) -> Path:
    """A project folder with an approved issue and a database of active subscribers
    (a SQLite file in the folder, or a fresh schema on the ``postgres`` server)."""
    for name in ("templates", "issues", "samples"):
        shutil.copytree(ROOT / name, folder / name)
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    url = f"sqlite:///{folder / 'bench.db'}" if postgres is None else _fresh_schema(postgres)
    config["database"] = {"url": url}
    config["delivery"].update(backend="sendgrid", concurrency=4, max_retries=2)
    config["render_check"] = {"on_send": "off"}  # the send is measured here, not the browser check
    config["delivery"]["sendgrid"].update(host=sink_url, batch_size=batch_size, timeout_seconds=30)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    issue = folder / "issues" / "2024-10-25.yaml"
    issue.write_text(
        issue.read_text(encoding="utf-8").replace("\nstatus: draft\n", "\nstatus: approved\n"), encoding="utf-8"
    )
    from newsletter.config import load_settings
    from newsletter.store.db import upgrade_database

    upgrade_database(load_settings(path))
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
    rows = (
        (f"reader{i}@example.net", f"reader{i}@example.net", f"Reader {i}", now, now, secrets.token_urlsafe(24))
        for i in range(subscribers)
    )
    columns = "email, email_key, name, created_at, updated_at, token"
    if postgres is None:
        with sqlite3.connect(folder / "bench.db") as db:
            db.executemany(
                f"INSERT INTO subscribers ({columns}, status, source, attributes)"
                " VALUES (?, ?, ?, ?, ?, ?, 'active', 'bench', '{}')",
                rows,
            )
        return path
    import psycopg

    with psycopg.connect(_libpq(url)) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY subscribers ({columns}, status, source, attributes) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((*row, "active", "bench", "{}"))
        cur.execute("ANALYZE")
    return path


_schemas: list[str] = []


def _fresh_schema(server: str) -> str:
    """A new schema on the PostgreSQL ``server`` (dropped at exit); its URL."""
    import atexit

    import psycopg

    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(_libpq(server), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    if not _schemas:
        atexit.register(_drop_schemas, server)
    _schemas.append(schema)
    return f"{server}{'&' if '?' in server else '?'}options=-csearch_path%3D{schema}"


def _drop_schemas(server: str) -> None:
    import psycopg

    with psycopg.connect(_libpq(server), autocommit=True) as conn:
        for schema in _schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _libpq(url: str) -> str:
    """A SQLAlchemy URL as psycopg takes it."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def timed_send(config: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one `newsletter send` process."""
    newsletter = str(Path(sys.executable).parent / "newsletter")
    env = {**os.environ, "SENDGRID_API_KEY": "SG.bench-key"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    result = subprocess.run(
        [newsletter, "--config", str(config), "send", str(config.parent / "issues/2024-10-25.yaml")],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"send failed:\n{result.stdout}\n{result.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print("  (peak RSS not above an earlier child's; figure is an upper bound)")
    return wall, peak / 1024


def run(subscribers: int, batch_size: int = 1000, postgres: str | None = None) -> tuple[float, float, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp, start_sink() as sink:
        config = make_project(Path(tmp), subscribers, sink.url, batch_size, postgres)
        wall, peak = timed_send(config)
        return wall, peak, sink.stats()


def concurrent_sends(config: Path, processes: int) -> tuple[float, list[float], float]:
    """(wall seconds, each process's peak RSS in MB, their CPU seconds in all) of
    ``processes`` `newsletter send` processes started together on the same issue."""
    newsletter = str(Path(sys.executable).parent / "newsletter")
    env = {**os.environ, "SENDGRID_API_KEY": "SG.bench-key"}
    command = [newsletter, "--config", str(config), "send", str(config.parent / "issues/2024-10-25.yaml")]
    logs = [tempfile.TemporaryFile() for _ in range(processes)]
    start = time.perf_counter()
    running = [subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    peaks, failed, cpu = [], [], 0.0
    for process, log in zip(running, logs, strict=False):
        _pid, status, usage = os.wait4(process.pid, 0)  # this child's own ru_maxrss
        process.returncode = os.waitstatus_to_exitcode(status)
        peaks.append(usage.ru_maxrss / 1024)
        cpu += usage.ru_utime + usage.ru_stime
        if process.returncode != 0:
            log.seek(0)
            failed.append(log.read().decode(errors="replace"))
        log.close()
    wall = time.perf_counter() - start
    if failed:
        raise SystemExit("send failed:\n" + "\n".join(failed))
    return wall, peaks, cpu


def scale_out(subscribers: int, processes: int, postgres: str) -> bool:
    """One process, then ``processes`` together, on fresh copies of the same list."""
    print(
        f"ledger on PostgreSQL; {subscribers:,} recipients; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)"
    )
    figures = {}
    for n in sorted({1, processes}):
        with tempfile.TemporaryDirectory() as tmp, start_sink(record=True) as sink:
            config = make_project(Path(tmp), subscribers, sink.url, 1000, postgres)
            wall, peaks, cpu = concurrent_sends(config, n)
            stats = sink.stats()
        lost = subscribers - stats["recipients"]
        figures[n] = (wall, max(peaks), stats["duplicates"], lost)
        print(
            f"{n} process{'es' * (n > 1)}: {wall:7.2f} s  {subscribers / wall:>9,.0f}/s  "
            f"peak {', '.join(f'{p:.1f}' for p in peaks)} MB  cpu {cpu:.1f} s  ({stats['requests']:,} requests, "
            f"{stats['duplicates']:,} duplicates, {lost:,} lost)",
            flush=True,
        )
    one, many = figures[1], figures[processes]
    checks = [
        ("1 process <= 30 s", one[0] <= 30),
        ("1 process <= 150 MB", one[1] <= 150),
        (f"{processes} processes: each <= 150 MB", many[1] <= 150),
        (f"{processes} processes faster than 1 ({one[0] / many[0]:.2f}x)", processes == 1 or many[0] < one[0]),
        ("0 duplicates", one[2] == 0 and many[2] == 0),
        ("0 lost", one[3] == 0 and many[3] == 0),
    ]
    for label, met in checks:
        print(f"target {label}: {'met' if met else 'MISSED'}")
    return all(met for _, met in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--also", type=int, default=100_000, help="a smaller list, for the memory ratio")
    parser.add_argument("--single", type=int, default=3000, help="recipients sent one request each")
    parser.add_argument("--postgres", metavar="URL", help="the ledger on this PostgreSQL server (a fresh schema)")
    parser.add_argument(
        "--processes", type=int, metavar="N", help="compare 1 and N sending processes on one send (PostgreSQL)"
    )
    args = parser.parse_args()
    if args.processes:
        if not args.postgres:
            parser.error("--processes needs --postgres (SQLite has one writer at a time)")
        sys.exit(0 if scale_out(args.subscribers, args.processes, args.postgres) else 1)
    print(f"ledger on {'PostgreSQL' if args.postgres else 'SQLite'}")
    # Smallest first: ru_maxrss of children is a running maximum.
    rows = []
    for n, batch in ((args.single, 1), (args.also, 1000), (args.subscribers, 1000)):
        wall, peak, stats = run(n, batch, args.postgres)
        assert stats["personalizations"] == n, stats
        rows.append((n, batch, wall, peak, stats["requests"]))
        print(
            f"{n:>9,} recipients, batch {batch:>4}: {wall:7.2f} s  {n / wall:>9,.0f}/s  "
            f"peak {peak:6.1f} MB  ({stats['requests']:,} requests)",
            flush=True,
        )
    single_rate = rows[0][0] / rows[0][2]
    big_rate = rows[2][0] / rows[2][2]
    print(f"batched vs one request per recipient: {big_rate / single_rate:,.0f}x the recipients a second")
    print(f"peak memory {args.subscribers:,} vs {args.also:,}: {rows[2][3] / rows[1][3]:.2f}x (target <= 1.20)")
    print("targets: 1,000,000 in <= 30 s (>= 33,000/s), <= 150 MB peak")


if __name__ == "__main__":
    main()
