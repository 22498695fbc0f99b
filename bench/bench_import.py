"""Benchmark of the subscriber store: import a generated CSV of N subscribers into a
fresh database, export it again, and stream the active audience; each step runs in its
own process so that its wall time and peak memory (ru_maxrss) are its own.

    .venv/bin/python bench/bench_import.py                 # 1,000,000 rows, SQLite
    .venv/bin/python bench/bench_import.py -n 100000
    .venv/bin/python bench/bench_import.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

Targets (issue 4): import <= 30 s and <= 200 MB peak RSS on SQLite; export and audience
stream in constant memory.
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
IMPORT_TARGET_S = 30.0
MEMORY_TARGET_MB = 200.0


def generate(path: Path, rows: int) -> None:
    """A realistic list: mixed-case addresses, a few duplicates, an extra column."""
    cities = ["Berlin", "Lagos", "Lima", "Osaka", "Quito", "Tunis", "Oslo", "Hanoi"]
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "name", "subscribed_at", "source", "city"])
        for i in range(rows):
            month, day = 1 + i % 12, 1 + i % 28
            writer.writerow([
                f"Reader.{i}@Example{i % 997}.org",
                f"Reader {i}",
                f"2023-{month:02d}-{day:02d}T08:{i % 60:02d}:00Z",
                "website" if i % 3 else "event",
                cities[i % len(cities)],
            ])


def child(step: str, url: str, arg: str) -> None:
    """One measured step, run in a fresh process; prints a JSON line."""
    sys.path.insert(0, str(ROOT))
    from newsletter.store import audience, db, export, importer

    engine = db.create_store_engine(url)
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
    figures["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    engine.dispose()
    print(json.dumps(figures))


def measure(step: str, url: str, arg: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", step, url, arg],
        check=True, capture_output=True, text=True,
    )
    figures: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def run(rows: int, url: str, work: Path) -> bool:
    source = work / "subscribers.csv"
    started = time.perf_counter()
    generate(source, rows)
    print(f"generated {rows:,} rows ({source.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    ok = True
    imported = measure("import", url, str(source))
    print(f"import:   {imported['seconds']:>6} s  peak {imported['peak_mb']:>6} MB  ({imported['summary']})")
    if rows >= 1_000_000 and url.startswith("sqlite"):
        ok = float(str(imported["seconds"])) <= IMPORT_TARGET_S
    ok = ok and float(str(imported["peak_mb"])) <= MEMORY_TARGET_MB
    exported = measure("export", url, str(work / "export.csv"))
    print(f"export:   {exported['seconds']:>6} s  peak {exported['peak_mb']:>6} MB  ({exported['rows']:,} rows)")
    streamed = measure("audience", url, "1000")
    print(f"audience: {streamed['seconds']:>6} s  peak {streamed['peak_mb']:>6} MB  "
          f"({streamed['members']:,} members in {streamed['batches']:,} batches of 1,000)")
    ok = ok and all(float(str(f["peak_mb"])) <= MEMORY_TARGET_MB for f in (exported, streamed))
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--rows", type=int, default=1_000_000, help="subscribers to generate")
    parser.add_argument("--postgres", metavar="URL", help="also measure on this PostgreSQL (a scratch schema is made and dropped)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        work = Path(tmp)
        print(f"SQLite ({args.rows:,} rows)")
        ok = run(args.rows, f"sqlite:///{work / 'bench.db'}", work) and ok
        if args.postgres:
            print(f"PostgreSQL ({args.rows:,} rows)")
            ok = postgres(args.rows, args.postgres, work) and ok
    print("targets met" if ok else f"TARGETS MISSED (import <= {IMPORT_TARGET_S:g} s, peak <= {MEMORY_TARGET_MB:g} MB)")
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
