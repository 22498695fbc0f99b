"""Benchmark: reading bounces. N subscribers and a send of N deliveries are written
straight into a fresh SQLite (or PostgreSQL) database, N RFC 3464 DSNs (one in four
soft, the rest hard) into a Maildir, and ``bounces.process`` applies them all; then the
same Maildir is read again with every message already recorded (a re-read mailbox).

    python bench/bench_bounces.py [-n 2000] [--postgres URL]

Prints DSNs a second for the first fetch and the parse alone; no target in the issue.
"""

from __future__ import annotations

import argparse
import datetime as dt
import mailbox
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter import bounces  # noqa: E402
from newsletter.mailbox import MaildirSource  # noqa: E402
from newsletter.store.db import create_store_engine, upgrade  # noqa: E402
from newsletter.store.tables import deliveries, sends, subscribers  # noqa: E402
from newsletter.verp import DeliveryTokens  # noqa: E402

DSN = """From: MAILER-DAEMON@mx.example.net
To: {to}
Delivered-To: {to}
Subject: Undelivered Mail Returned to Sender
Date: Mon, 28 Oct 2024 09:00:00 +0000
Message-ID: <dsn-{n}@mx.example.net>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b{n}"

--b{n}
Content-Type: text/plain; charset=us-ascii

Your message could not be delivered to <{rcpt}>.

--b{n}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {rcpt}
Action: failed
Status: {status}
Diagnostic-Code: smtp; {code} {status} <{rcpt}>: refused

--b{n}
Content-Type: text/rfc822-headers

From: newsletter@news.example.org
To: {rcpt}
Message-ID: {message_id}
Subject: Diplomacy Watch

--b{n}--
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--postgres", help="a PostgreSQL URL: a schema of its own there instead of a SQLite file")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-bounces-"))
    schema = f"bench_bounces_{secrets.token_hex(4)}"
    admin = None
    if args.postgres:
        admin = sa.create_engine(args.postgres)
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        url = (
            f"{args.postgres}?options=-csearch_path%3D{schema}" if args.postgres else f"sqlite:///{folder / 'bench.db'}"
        )
        engine = create_store_engine(url)
        upgrade(engine)
        tokens = DeliveryTokens(secrets.token_hex(16))
        now = dt.datetime.now(dt.UTC)
        tag = secrets.token_hex(3)
        with engine.begin() as conn:
            send_id = conn.execute(
                sends.insert()
                .values(issue=f"bench-{tag}", subject="s", audience=args.n, created_at=now)
                .returning(sends.c.id)
            ).scalar_one()
            rows = [
                {
                    "email": f"r{i}-{tag}@example.net",
                    "email_key": f"r{i}-{tag}@example.net",
                    "name": "",
                    "status": "active",
                    "created_at": now,
                    "updated_at": now,
                    "source": "bench",
                    "attributes": {},
                    "token": secrets.token_urlsafe(24),
                }
                for i in range(args.n)
            ]
            conn.execute(subscribers.insert(), rows)
            ids = conn.execute(
                subscribers.select().with_only_columns(subscribers.c.id).where(subscribers.c.source == "bench")
            ).scalars()
            conn.execute(
                deliveries.insert(),
                [{"send_id": send_id, "subscriber_id": sid, "state": "sent", "batch_id": "b"} for sid in ids],
            )
            delivered = conn.execute(
                deliveries.select()
                .with_only_columns(deliveries.c.id, subscribers.c.email)
                .join_from(deliveries, subscribers, subscribers.c.id == deliveries.c.subscriber_id)
                .where(deliveries.c.send_id == send_id)
            ).all()
        box = mailbox.Maildir(folder / "bounces", create=True)
        raws = []
        for n, (delivery_id, email) in enumerate(delivered):
            soft = n % 4 == 0
            raw = DSN.format(
                n=n,
                to=tokens.return_path("bounces@news.example.org", delivery_id),
                rcpt=email,
                status="4.2.2" if soft else "5.1.1",
                code=452 if soft else 550,
                message_id=tokens.message_id(delivery_id, "news.example.org"),
            ).replace("\n", "\r\n")
            raws.append(raw.encode("ascii"))
            box.add(raws[-1])
        parse_times = []
        for _ in range(3):
            start = time.perf_counter()
            for raw in raws:
                bounces.parse(raw, tokens)
            parse_times.append(time.perf_counter() - start)
        parse = statistics.median(parse_times)
        start = time.perf_counter()
        report = bounces.process(engine, MaildirSource(folder / "bounces"), tokens)
        first = time.perf_counter() - start
        assert (report.hard, report.soft) == (args.n - (args.n + 3) // 4, (args.n + 3) // 4), report
        # The same messages again (a restored mailbox): all recorded before.
        processed = mailbox.Maildir(folder / "bounces").get_folder("Processed")
        again_box = mailbox.Maildir(folder / "again", create=True)
        for key in processed.iterkeys():
            again_box.add(processed.get_bytes(key))
        start = time.perf_counter()
        again = bounces.process(engine, MaildirSource(folder / "again"), tokens)
        second = time.perf_counter() - start
        assert again.duplicates == args.n and not again.status_changes, again
        backend = "PostgreSQL" if args.postgres else "SQLite"
        print(f"{args.n:,} DSNs, {backend}")
        print(f"parse only (median of 3): {parse:.2f} s, {args.n / parse:,.0f} DSNs/s")
        print(f"fetch from a Maildir and apply: {first:.2f} s, {args.n / first:,.0f} DSNs/s")
        print(f"the same again, all seen before: {second:.2f} s, {args.n / second:,.0f} DSNs/s")
        engine.dispose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if admin is not None:
            with admin.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            admin.dispose()


if __name__ == "__main__":
    main()
