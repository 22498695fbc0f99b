"""Benchmark of the subscriber store: import a generated CSV of N subscribers into a
fresh database, export it again, and stream the active audience; each step runs in its
own process so that its wall time and peak memory (ru_maxrss) are its own.

    .venv/bin/python bench/bench_import.py                 # 1,000,000 rows, SQLite
    .venv/bin/python bench/bench_import.py -n 100000
    .venv/bin/python bench/bench_import.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

Targets (issues 4 and 15), for 1,000,000 rows: import <= 30 s on SQLite, <= 20 s on
PostgreSQL (COPY); export <= 10 s on PostgreSQL; every step <= 200 MB peak RSS. Each is
printed with "met" or "MISSED". The machine's load average is printed too: on a shared
machine, run it a few times and take the median.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPORT_TARGET_S = {"sqlite": 30.0, "postgresql": 20.0}
EXPORT_TARGET_S = {"postgresql": 10.0}
MEMORY_TARGET_MB = 200.0


def generate(path: Path, rows: int) -> None:
    """A realistic list: mixed-case addresses, a few duplicates, an extra column."""
    cities = ["Berlin", "Lagos", "Lima", "Osaka", "Quito", "Tunis", "Oslo", "Hanoi"]
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "name", "subscribed_at", "source", "city"])
        for i in range(rows):
            month, day = 1 + i % 12, 1 + i % 28
            writer.writerow(
                [
                    f"Reader.{i}@Example{i % 997}.org",
                    f"Reader {i}",
                    f"2023-{month:02d}-{day:02d}T08:{i % 60:02d}:00Z",
                    "website" if i % 3 else "event",
                    cities[i % len(cities)],
                ]
            )


def child(step: str, url: str, arg: str) -> None:
    """One measured step, run in a fresh process; prints a JSON line."""
    sys.path.insert(0, str(ROOT))
    from newsletter.store import audience, db, export, importer

    engine = db.create_store_engine(url)
    backends = _server_pids(engine)
    started = time.perf_counter()
    figures: dict[str, object] = {}
    if step == "import":
        db.upgrade(engine)
        started = time.perf_counter()
        result = importer.import_csv(engine, Path(arg))
        figures["summary"] = result.summary()
    elif step == "export":
        with open(arg, "w", encoding="utf-8", newline="") as out:
            figures["rows"] = export.export_csv(engine, out)
    elif step == "audience":
        batches = members = 0
        for batch in audience.iter_active(engine, batch_size=int(arg)):
            batches += 1
            members += len(batch)
        figures.update(batches=batches, members=members)
    figures["seconds"] = round(time.perf_counter() - started, 2)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures["peak_mb"] = round(usage.ru_maxrss / 1024, 1)
    figures["cpu"] = round(usage.ru_utime + usage.ru_stime, 1)
    figures["server_cpu"] = round(sum(_cpu_seconds(pid) for pid in backends), 1)
    engine.dispose()
    print(json.dumps(figures))


def _server_pids(engine: object) -> list[int]:
    """The PostgreSQL backends this engine opens (filled in as it connects), for their
    CPU time: on a shared machine, CPU seconds say more than wall time."""
    from sqlalchemy import event

    pids: list[int] = []
    if engine.dialect.name == "postgresql":

        @event.listens_for(engine, "connect")
        def remember(dbapi_connection: object, _record: object) -> None:
            pids.append(dbapi_connection.info.backend_pid)

    return pids


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a local process (0 when it is not on this machine)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu(figures: dict[str, object]) -> str:
    server = float(str(figures["server_cpu"]))
    return f"  cpu {figures['cpu']} s" + (f" + server {server:g} s" if server else "")


def measure(step: str, url: str, arg: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", step, url, arg],
        check=True,
        capture_output=True,
        text=True,
    )
    figures: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def run(rows: int, url: str, work: Path) -> bool:
    source = work / "subscribers.csv"
    started = time.perf_counter()
    generate(source, rows)
    print(f"generated {rows:,} rows ({source.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    engine = "sqlite" if url.startswith("sqlite") else "postgresql"
    imported = measure("import", url, str(source))
    print(
        f"import:   {imported['seconds']:>6} s  peak {imported['peak_mb']:>6} MB{_cpu(imported)}  ({imported['summary']})"
    )
    exported = measure("export", url, str(work / "export.csv"))
    print(
        f"export:   {exported['seconds']:>6} s  peak {exported['peak_mb']:>6} MB{_cpu(exported)}  ({exported['rows']:,} rows)"
    )
    streamed = measure("audience", url, "1000")
    print(
        f"audience: {streamed['seconds']:>6} s  peak {streamed['peak_mb']:>6} MB{_cpu(streamed)}  "
        f"({streamed['members']:,} members in {streamed['batches']:,} batches of 1,000)"
    )
    checks = [
        (
            f"peak <= {MEMORY_TARGET_MB:g} MB",
            max(float(str(f["peak_mb"])) for f in (imported, exported, streamed)),
            MEMORY_TARGET_MB,
        )
    ]
    if rows >= 1_000_000:  # the time targets are for a million rows
        checks.append(
            (f"import <= {IMPORT_TARGET_S[engine]:g} s", float(str(imported["seconds"])), IMPORT_TARGET_S[engine])
        )
        if engine in EXPORT_TARGET_S:
            checks.append(
                (f"export <= {EXPORT_TARGET_S[engine]:g} s", float(str(exported["seconds"])), EXPORT_TARGET_S[engine])
            )
    ok = True
    for label, value, limit in checks:
        print(f"target {label}: {value:g} {'met' if value <= limit else 'MISSED'}")
        ok = ok and value <= limit
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--rows", type=int, default=1_000_000, help="subscribers to generate")
    parser.add_argument(
        "--postgres", metavar="URL", help="also measure on this PostgreSQL (a scratch schema is made and dropped)"
    )
    parser.add_argument("--no-sqlite", action="store_true", help="measure PostgreSQL only")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        work = Path(tmp)
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
        if not args.no_sqlite:
            print(f"SQLite ({args.rows:,} rows)")
            ok = run(args.rows, f"sqlite:///{work / 'bench.db'}", work) and ok
        if args.postgres:
            print(f"PostgreSQL ({args.rows:,} rows, COPY)")
            ok = postgres(args.rows, args.postgres, work) and ok
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


def postgres(rows: int, url: str, work: Path) -> bool:
    sys.path.insert(0, str(ROOT))
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from newsletter.store.db import create_store_engine

    schema = f"bench_{secrets.token_hex(4)}"
    admin = create_store_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        return run(rows, scoped.render_as_string(hide_password=False), work)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
