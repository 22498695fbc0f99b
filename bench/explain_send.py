"""The send path's statements on PostgreSQL at N subscribers, each run once under
``EXPLAIN (ANALYZE, BUFFERS)`` (inside a savepoint that is rolled back, so the real
statement then runs as usual): the audience freeze, then the batch statements at the
first batch and again half-way through the send, then the end-of-send checks.

    .venv/bin/python bench/explain_send.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/explain_send.py --postgres URL --subscribers 100000 --plans   # whole plans

Prints, per statement, its time and the scans it used, and fails (exit 1) when a
statement run once per batch reads ``deliveries`` or ``subscribers`` with a
sequential scan. A scratch schema is made and dropped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_SCAN = re.compile(
    r"((?:Parallel )?(?:Seq Scan|Index Only Scan|Index Scan|Bitmap Heap Scan|Bitmap Index Scan)"
    r"(?: using \w+)? on \w+)"
)


class Explainer:
    """Runs each statement of the engine under EXPLAIN ANALYZE first, while ``on``."""

    def __init__(self, engine: Any, show_plans: bool) -> None:
        from sqlalchemy import event

        self.on = False
        self.phase = ""
        self.show = show_plans
        self.bad: list[str] = []
        event.listen(engine, "before_cursor_execute", self._explain)

    def _explain(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        words = statement.lstrip().split(None, 1)
        if (
            not self.on
            or executemany
            or not words
            or words[0].upper() not in ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")
        ):
            return
        cursor.execute("SAVEPOINT explain_send")
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        plan = [row[0] for row in cursor.fetchall()]
        cursor.execute("ROLLBACK TO SAVEPOINT explain_send")
        summary = " ".join(statement.split())[:110]
        took = next((line.split(":")[1].strip() for line in plan if line.startswith("Execution Time")), "?")
        scans = sorted(set(_SCAN.findall("\n".join(plan))))
        print(f"[{self.phase}] {took:>12}  {summary}")
        print(f"{'':>16}scans: {'; '.join(scans) or 'none'}")
        if self.show:
            print("\n".join(f"{'':>16}{line}" for line in plan))
        if self.phase.startswith("batch") and any(
            s.startswith("Seq Scan on") and s.split()[-1] in ("deliveries", "subscribers") for s in scans
        ):
            self.bad.append(f"{self.phase}: {summary}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", metavar="URL", required=True)
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--plans", action="store_true", help="print the whole plans")
    args = parser.parse_args()

    import psycopg
    from sqlalchemy.engine import make_url

    from newsletter.store import batches, db, ledger

    schema = f"bench_{secrets.token_hex(4)}"
    libpq = make_url(args.postgres).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{args.postgres}{'&' if '?' in args.postgres else '?'}options=-csearch_path%3D{schema}"
    engine = db.create_store_engine(url)
    try:
        db.upgrade(engine)
        started = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        with psycopg.connect(libpq, options=f"-csearch_path={schema}") as conn, conn.cursor() as cur:
            columns = "email, email_key, name, created_at, updated_at, token, status, source, attributes"
            with cur.copy(f"COPY subscribers ({columns}) FROM STDIN") as copy:
                for i in range(args.subscribers):
                    email = f"reader{i}@example.net"
                    # a few opted out, as on a real list
                    status = "unsubscribed" if i % 50 == 0 else "active"
                    copy.write_row(
                        (email, email, f"Reader {i}", now, now, secrets.token_urlsafe(24), status, "bench", "{}")
                    )
            cur.execute("ANALYZE")
        print(f"{args.subscribers:,} subscribers in {time.perf_counter() - started:.1f} s; batches of {args.batch:,}")
        explainer = Explainer(engine, args.plans)
        owner = batches.new_owner()

        explainer.on, explainer.phase = True, "freeze"
        send, _ = ledger.start_send(engine, "explain", "Explain", "hash")
        explainer.on = False
        count = -(-send.audience // args.batch)
        after = 0  # as send._Run.worker does
        for number in range(count):
            explainer.on = number in (0, count // 2)
            explainer.phase = f"batch {number + 1:,}/{count:,}"
            batch_id = batches.new_batch_id()
            claimed, _ = batches.claim_batch(
                engine, send.id, args.batch, batch_id, owner=owner, lease_seconds=300, after=after
            )
            after = claimed[-1].key if claimed else after
            batches.renew_leases(engine, owner, 300) if explainer.on else None
            fence = batches.Fence(batch_id, owner)
            batches.settle(engine, fence, batches.Settlement(sent=None, message_id="explain"), close=True)
            if number == count // 2:
                print(f"(autovacuum has {'not ' * (not _vacuumed(engine))}visited deliveries since the freeze)")
        explainer.on, explainer.phase = True, "end"
        # as send._Run does when no batch is left above the frontier, before looking below
        batches.refresh_statistics(engine)
        batches.claim_batch(engine, send.id, args.batch, batches.new_batch_id(), owner=owner, lease_seconds=300)
        batches.expire_dead_owners(engine, send.id)
        batches.sweep(engine, send.id)
        ledger.has_rows(engine, send.id, "pending")  # once per pass of the workers
        ledger.has_rows(engine, send.id, "in_flight")
        ledger.finish_send(engine, send.id)
        ledger.counts(engine, send.id)
        explainer.on = False
        if explainer.bad:
            print("SEQUENTIAL SCANS PER BATCH:\n  " + "\n  ".join(explainer.bad))
            return 1
        print("every per-batch statement uses an index: target met")
        return 0
    finally:
        engine.dispose()
        with psycopg.connect(libpq, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _vacuumed(engine: Any) -> bool:
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT last_autovacuum IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'deliveries' "
            "AND schemaname = current_schema()"
        ).first()
    return bool(row and row[0])


if __name__ == "__main__":
    sys.exit(main())
