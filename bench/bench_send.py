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

    python bench/bench_send.py --vs DIR [--pairs 2] [--postgres URL [--processes 2]]

compares this code with another checkout (DIR, e.g. a `git worktree` of the commit
before a change) in one run: the same send of ``--subscribers``, alternating before
(DIR) and after (this checkout), A B A B, ``--pairs`` times. Each side's `newsletter
send` runs as ``python -m newsletter`` with ``PYTHONPATH`` set to its checkout, on a
database made by that checkout's own migrations, holding the same subscribers (each run
gets a fresh copy made the same way: a copy of the side's SQLite file, or a new
PostgreSQL database on the server, dropped afterwards). Reported per side: the median
wall time, CPU (user + system of the send processes, from the kernel's accounting of
each reaped child), peak memory, and the ratios after/before. Target (issue 21): wall
and CPU ratios <= 1.05, peak <= 150 MB, N processes faster than one.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sendgrid_sink import start_sink  # noqa: E402

ISSUE = "issues/2024-10-25.yaml"
SEED = 21  # the subscribers' tokens: the same list for every database made in a run
CREATED = "2024-10-01 09:00:00"


# --- a project folder and its database, made by one checkout's code -------------------


def _env(code: Path) -> dict[str, str]:
    """The environment of a `newsletter` process of the checkout ``code``: ``python -m
    newsletter`` then imports ``code``/newsletter (the process runs in the project folder,
    not in a checkout, so no other copy comes first)."""
    return {**os.environ, "SENDGRID_API_KEY": "SG.bench-key", "PYTHONPATH": str(code)}


def _newsletter(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "newsletter", "--config", str(config), *args]


def copy_files(folder: Path, code: Path) -> None:
    """``code``'s templates, issues and samples in ``folder``, the example issue approved."""
    for name in ("templates", "issues", "samples"):
        shutil.copytree(code / name, folder / name)
    issue = folder / ISSUE
    issue.write_text(
        issue.read_text(encoding="utf-8").replace("\nstatus: draft\n", "\nstatus: approved\n"), encoding="utf-8"
    )


def write_config(folder: Path, code: Path, url: str, sink_url: str, batch_size: int) -> Path:
    """``code``'s config.yaml with the SendGrid backend pointed at the sink."""
    config = yaml.safe_load((code / "config.yaml").read_text(encoding="utf-8"))
    config["database"] = {"url": url}
    config["delivery"].update(backend="sendgrid", concurrency=4, max_retries=2)
    config["render_check"] = {"on_send": "off"}  # the send is measured here, not the browser check
    config["delivery"]["sendgrid"].update(host=sink_url, batch_size=batch_size, timeout_seconds=30)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def upgrade(config: Path, code: Path) -> None:
    """The database of ``config`` created by ``code``'s own migrations."""
    result = subprocess.run(
        _newsletter(config, "db", "upgrade"), env=_env(code), cwd=config.parent, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"db upgrade failed ({code}):\n{result.stdout}\n{result.stderr}")


def subscriber_rows(count: int) -> Iterator[tuple[str, ...]]:
    """The same ``count`` active subscribers every time (fixed tokens and dates)."""
    rng = random.Random(SEED)
    for i in range(count):
        address = f"reader{i}@example.net"
        token = base64.urlsafe_b64encode(rng.randbytes(24)).decode()
        yield address, address, f"Reader {i}", CREATED, CREATED, token


COLUMNS = "email, email_key, name, created_at, updated_at, token, status, source, attributes"


def fill_sqlite(path: Path, count: int) -> None:
    with sqlite3.connect(path) as db:
        db.executemany(
            f"INSERT INTO subscribers ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'active', 'bench', '{{}}')",
            subscriber_rows(count),
        )
    db.close()


def fill_postgres(url: str, count: int) -> None:
    import psycopg

    with psycopg.connect(_libpq(url)) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY subscribers ({COLUMNS}) FROM STDIN") as copy:
            for row in subscriber_rows(count):
                copy.write_row((*row, "active", "bench", "{}"))
        cur.execute("ANALYZE")


def make_project(
    folder: Path, subscribers: int, sink_url: str, batch_size: int, postgres: str | None = None, code: Path = ROOT
) -> Path:
    """A project folder with an approved issue and a database of active subscribers
    (a SQLite file in the folder, or a fresh schema on the ``postgres`` server), made by
    the checkout ``code``."""
    copy_files(folder, code)
    url = f"sqlite:///{folder / 'bench.db'}" if postgres is None else _fresh_schema(postgres)
    path = write_config(folder, code, url, sink_url, batch_size)
    upgrade(path, code)
    if postgres is None:
        fill_sqlite(folder / "bench.db", subscribers)
    else:
        fill_postgres(url, subscribers)
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


# --- timed sends --------------------------------------------------------------------------


@dataclass
class Timed:
    """One timed send: ``processes`` `newsletter send` processes started together."""

    wall: float  # seconds, from the first start to the last exit
    cpu: float  # user + system seconds of the send processes, in all
    peaks: list[float]  # each process's peak RSS, MB
    machine_cpu: float | None  # busy CPU seconds of the whole machine meanwhile (/proc/stat)

    @property
    def peak(self) -> float:
        return max(self.peaks)


def _machine_busy() -> float | None:
    """CPU seconds the machine spent busy since boot (every process: the sink, PostgreSQL,
    anything else running), or None where /proc/stat is not there."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def concurrent_sends(config: Path, processes: int, code: Path = ROOT) -> Timed:
    """``processes`` `newsletter send` processes of the checkout ``code`` started together
    on the same issue; each one's CPU and peak RSS are the kernel's figures for that
    child (os.wait4), not a running maximum over every child."""
    command = _newsletter(config, "send", str(config.parent / ISSUE))
    logs = [tempfile.TemporaryFile() for _ in range(processes)]
    busy = _machine_busy()
    start = time.perf_counter()
    running = [
        subprocess.Popen(command, env=_env(code), cwd=config.parent, stdout=log, stderr=subprocess.STDOUT)
        for log in logs
    ]
    peaks, failed, cpu = [], [], 0.0
    for process, log in zip(running, logs, strict=True):
        _pid, status, usage = os.wait4(process.pid, 0)  # this child's own ru_maxrss
        process.returncode = os.waitstatus_to_exitcode(status)
        peaks.append(usage.ru_maxrss / 1024)
        cpu += usage.ru_utime + usage.ru_stime
        if process.returncode != 0:
            log.seek(0)
            failed.append(log.read().decode(errors="replace"))
        log.close()
    wall = time.perf_counter() - start
    after = _machine_busy()
    if failed:
        raise SystemExit(f"send failed ({code}):\n" + "\n".join(failed))
    return Timed(wall, cpu, peaks, None if busy is None or after is None else after - busy)


def run(subscribers: int, batch_size: int = 1000, postgres: str | None = None) -> tuple[Timed, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp, start_sink() as sink:
        config = make_project(Path(tmp), subscribers, sink.url, batch_size, postgres)
        timed = concurrent_sends(config, 1)
        return timed, sink.stats()


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def scale_out(subscribers: int, processes: int, postgres: str) -> bool:
    """One process, then ``processes`` together, on fresh copies of the same list."""
    print(f"ledger on PostgreSQL; {subscribers:,} recipients; load average {_load()} ({os.cpu_count()} CPUs)")
    figures = {}
    for n in sorted({1, processes}):
        with tempfile.TemporaryDirectory() as tmp, start_sink(record=True) as sink:
            config = make_project(Path(tmp), subscribers, sink.url, 1000, postgres)
            timed = concurrent_sends(config, n)
            stats = sink.stats()
        lost = subscribers - stats["recipients"]
        figures[n] = (timed.wall, timed.peak, stats["duplicates"], lost)
        print(
            f"{n} process{'es' * (n > 1)}: {timed.wall:7.2f} s  {subscribers / timed.wall:>9,.0f}/s  "
            f"peak {', '.join(f'{p:.1f}' for p in timed.peaks)} MB  cpu {timed.cpu:.1f} s  "
            f"({stats['requests']:,} requests, {stats['duplicates']:,} duplicates, {lost:,} lost)",
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


# --- before and after, side by side ---------------------------------------------------------


def _sendgrid_config(folder: Path, code: Path, url: str, sink_url: str) -> Path:
    return write_config(folder, code, url, sink_url, 1000)


class Versus:
    """The same send measured with two checkouts in turn (before = ``--vs DIR``, after =
    this one), each on a fresh database of the same subscribers made by its own code."""

    def __init__(self, before: Path | None, subscribers: int, postgres: str | None, workdir: Path) -> None:
        # before None: only this checkout ("after")
        self.sides = {"after": ROOT} if before is None else {"before": before, "after": ROOT}
        self.subscribers, self.postgres, self.workdir = subscribers, postgres, workdir
        self.run_id = secrets.token_hex(4)
        self.databases: list[str] = []
        self.runs = 0
        self.templates: dict[str, Path] = {}
        for side, code in self.sides.items():
            folder = workdir / f"template-{side}"
            folder.mkdir()
            copy_files(folder, code)
            if postgres is None:  # the SQLite file itself: each run copies it
                url = f"sqlite:///{folder / 'bench.db'}"
                upgrade(write_config(folder, code, url, "http://127.0.0.1:1", 1000), code)
                started = time.perf_counter()
                fill_sqlite(folder / "bench.db", subscribers)
                print(f"  {side}: {subscribers:,} subscribers in {time.perf_counter() - started:.1f} s", flush=True)
            self.templates[side] = folder

    @contextmanager
    def project(self, side: str, configure: Callable[[Path, Path, str], Path]) -> Iterator[Path]:
        """A fresh project of ``side`` (its files and a database of the subscribers made by
        its code), its config written by ``configure(folder, code, database_url)``; gone
        afterwards. What the preparation wrote is on disk before this yields."""
        code = self.sides[side]
        self.runs += 1
        folder = self.workdir / f"run-{self.runs}"
        shutil.copytree(self.templates[side], folder)
        database = None
        try:
            if self.postgres is None:
                config = configure(folder, code, f"sqlite:///{folder / 'bench.db'}")
            else:
                database = f"bench_{self.run_id}_{self.runs}_{side}"
                url = self._create_database(database)
                config = configure(folder, code, url)
                upgrade(config, code)
                fill_postgres(url, self.subscribers)
            self._settle()
            yield config
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            if database is not None:
                self._drop_database(database)

    def measure(self, side: str, processes: int) -> tuple[Timed, dict[str, int]]:
        """``processes`` sends of ``side`` together, to a sink of their own."""
        with start_sink(record=processes > 1) as sink:
            configure = partial(_sendgrid_config, sink_url=sink.url)
            with self.project(side, configure) as config:
                timed = concurrent_sends(config, processes, self.sides[side])
            return timed, sink.stats()

    def _settle(self) -> None:
        """What the preparation wrote goes to disk before the clock starts."""
        os.sync()
        if self.postgres is not None:
            import psycopg

            with psycopg.connect(_libpq(self.postgres), autocommit=True) as conn:
                conn.execute("CHECKPOINT")

    def _create_database(self, name: str) -> str:
        import psycopg
        from sqlalchemy.engine import make_url

        assert self.postgres is not None
        with psycopg.connect(_libpq(self.postgres), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return make_url(self.postgres).set(database=name).render_as_string(hide_password=False)

    def _drop_database(self, name: str) -> None:
        import psycopg

        assert self.postgres is not None
        with psycopg.connect(_libpq(self.postgres), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.databases.remove(name)

    def close(self) -> None:
        for name in list(self.databases):
            self._drop_database(name)


def versus(args: argparse.Namespace) -> bool:
    before = Path(args.vs).resolve()
    if not (before / "newsletter" / "__init__.py").is_file():
        raise SystemExit(f"--vs {args.vs}: not a checkout of this project (no newsletter/__init__.py)")
    counts = sorted({1, args.processes or 1})
    n = args.subscribers
    print(
        f"ledger on {'PostgreSQL' if args.postgres else 'SQLite'}; {n:,} recipients; before: {before}, "
        f"after: {ROOT}; {args.pairs} pairs, A B A B; load average {_load()} ({os.cpu_count()} CPUs)",
        flush=True,
    )
    results: dict[tuple[str, int], list[Timed]] = {(side, k): [] for side in ("before", "after") for k in counts}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        bench = Versus(before, n, args.postgres, Path(tmp))
        try:
            for pair in range(1, args.pairs + 1):
                for k in counts:
                    for side in ("before", "after"):
                        load = _load()
                        timed, stats = bench.measure(side, k)
                        results[side, k].append(timed)
                        if k > 1:
                            lost, duplicates = n - stats["recipients"], stats["duplicates"]
                            check = f"{duplicates:,} duplicates, {lost:,} lost"
                            ok = ok and lost == 0 and duplicates == 0
                        else:
                            check = f"{stats['personalizations']:,} recipients"
                            ok = ok and stats["personalizations"] == n
                        machine = "" if timed.machine_cpu is None else f"  machine cpu {timed.machine_cpu:5.1f} s"
                        print(
                            f"pair {pair} {side:>6} {k} process{'es' * (k > 1)}: wall {timed.wall:6.2f} s "
                            f"{n / timed.wall:>8,.0f}/s  cpu {timed.cpu:5.1f} s{machine}  "
                            f"peak {', '.join(f'{p:.1f}' for p in timed.peaks)} MB  ({check}; "
                            f"load before {load})",
                            flush=True,
                        )
        finally:
            bench.close()
    print(f"load average at the end {_load()}")
    return report(results, counts, n) and ok


def report(results: dict[tuple[str, int], list[Timed]], counts: list[int], n: int) -> bool:
    ok = True
    medians = {}
    for k in counts:
        label = f"{k} process{'es' * (k > 1)}"
        for side in ("before", "after"):
            runs = results[side, k]
            wall = statistics.median(t.wall for t in runs)
            cpu = statistics.median(t.cpu for t in runs)
            peak = max(t.peak for t in runs)
            medians[side, k] = wall
            machine = [t.machine_cpu for t in runs if t.machine_cpu is not None]
            extra = f"  machine cpu {statistics.median(machine):5.1f} s" if machine else ""
            print(
                f"{label}, {side:>6}: median wall {wall:6.2f} s ({n / wall:,.0f}/s)  median cpu {cpu:5.1f} s"
                f"{extra}  peak {peak:.1f} MB"
            )
        before, after = results["before", k], results["after", k]
        wall_ratio = statistics.median(t.wall for t in after) / statistics.median(t.wall for t in before)
        cpu_ratio = statistics.median(t.cpu for t in after) / statistics.median(t.cpu for t in before)
        paired = [a.wall / b.wall for a, b in zip(after, before, strict=True)]
        paired_cpu = [a.cpu / b.cpu for a, b in zip(after, before, strict=True)]
        print(
            f"{label}, after/before: wall {wall_ratio:.3f}, cpu {cpu_ratio:.3f} (pair by pair: wall "
            f"{', '.join(f'{r:.3f}' for r in paired)}; cpu {', '.join(f'{r:.3f}' for r in paired_cpu)})"
        )
        peak = max(t.peak for t in after)
        checks = [
            (f"{label}: wall after/before <= 1.05", wall_ratio <= 1.05),
            (f"{label}: cpu after/before <= 1.05", cpu_ratio <= 1.05),
            (f"{label}: peak <= 150 MB ({peak:.1f})", peak <= 150),
        ]
        for text, met in checks:
            print(f"target {text}: {'met' if met else 'MISSED'}")
            ok = ok and met
    if len(counts) > 1:
        k = counts[-1]
        for side in ("before", "after"):
            speedup = medians[side, 1] / medians[side, k]
            met = speedup > 1
            print(f"target {side}: {k} processes faster than 1 ({speedup:.2f}x): {'met' if met else 'MISSED'}")
            ok = ok and (met or side == "before")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--also", type=int, default=100_000, help="a smaller list, for the memory ratio")
    parser.add_argument("--single", type=int, default=3000, help="recipients sent one request each")
    parser.add_argument("--postgres", metavar="URL", help="the ledger on this PostgreSQL server (a fresh schema)")
    parser.add_argument(
        "--processes", type=int, metavar="N", help="compare 1 and N sending processes on one send (PostgreSQL)"
    )
    parser.add_argument("--vs", metavar="DIR", help="compare with the checkout DIR (before), A B A B")
    parser.add_argument("--pairs", type=int, default=2, help="with --vs: before/after pairs (default 2)")
    args = parser.parse_args()
    if args.processes and not args.postgres:
        parser.error("--processes needs --postgres (SQLite has one writer at a time)")
    if args.vs:
        sys.exit(0 if versus(args) else 1)
    if args.processes:
        sys.exit(0 if scale_out(args.subscribers, args.processes, args.postgres) else 1)
    print(f"ledger on {'PostgreSQL' if args.postgres else 'SQLite'}; load average {_load()}")
    rows = []
    for n, batch in ((args.single, 1), (args.also, 1000), (args.subscribers, 1000)):
        timed, stats = run(n, batch, args.postgres)
        assert stats["personalizations"] == n, stats
        rows.append((n, batch, timed.wall, timed.peak, stats["requests"]))
        print(
            f"{n:>9,} recipients, batch {batch:>4}: {timed.wall:7.2f} s  {n / timed.wall:>9,.0f}/s  "
            f"cpu {timed.cpu:5.1f} s  peak {timed.peak:6.1f} MB  ({stats['requests']:,} requests)",
            flush=True,
        )
    single_rate = rows[0][0] / rows[0][2]
    big_rate = rows[2][0] / rows[2][2]
    print(f"batched vs one request per recipient: {big_rate / single_rate:,.0f}x the recipients a second")
    print(f"peak memory {args.subscribers:,} vs {args.also:,}: {rows[2][3] / rows[1][3]:.2f}x (target <= 1.20)")
    print("targets: 1,000,000 in <= 30 s (>= 33,000/s), <= 150 MB peak")


if __name__ == "__main__":
    main()
