"""Benchmark: ingesting 100,000 SendGrid webhook events in signed requests of 1,000 (as
SendGrid posts them) through the web app's ``/webhooks/sendgrid``, on SQLite or
(``--postgres URL``) PostgreSQL.

    python bench/bench_ingest.py [--events 100000] [--batch 1000] [--subscribers 100000]
    python bench/bench_ingest.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

The database holds the subscribers and a sent issue's ledger; the events are a realistic
mix (processed, delivered, opens, clicks, deferrals, bounces, drops, complaints,
unsubscribes) naming known subscribers and their ledger rows and batches, so every
request also looks up addresses, changes statuses and reconciles its batches. The
requests are built and signed before the clock starts; the app verifies each signature.
Prints the wall time (median of ``--runs`` fresh databases). Target (issue 14): <= 20 s.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_send import _libpq, make_project  # noqa: E402

SLUG = "2024-10-25"
KEY_ENV = "BENCH_SENDGRID_WEBHOOK_KEY"
MIX = (
    ("processed", 0.20),
    ("delivered", 0.45),
    ("open", 0.20),
    ("click", 0.08),
    ("deferred", 0.03),
    ("bounce", 0.02),
    ("dropped", 0.005),
    ("spamreport", 0.002),
    ("unsubscribe", 0.013),
)


def seed_ledger(url: str, recipients: int) -> None:
    """A sent issue: one send and a delivery row per subscriber (batches of 1000)."""
    rows = [(i, 1, i, "sent", f"b{i // 1000}", 1) for i in range(1, recipients + 1)]
    cols = "id, send_id, subscriber_id, state, batch_id, attempts"
    send = "INSERT INTO sends (id, issue, subject, audience, created_at) VALUES (1, %s, 'Bench', %s, %s)"
    if url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        db.execute(send.replace("%s", "?"), (SLUG, recipients, "2024-10-25 09:00:00.000000"))
        db.executemany(f"INSERT INTO deliveries ({cols}) VALUES (?, ?, ?, ?, ?, ?)", rows)
        db.commit()
        db.execute("ANALYZE")
        db.close()
        return
    import psycopg

    with psycopg.connect(_libpq(url)) as conn, conn.cursor() as cur:
        cur.execute(send, (SLUG, recipients, "2024-10-25 09:00:00+00"))
        with cur.copy(f"COPY deliveries ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def make_events(total: int, subscribers: int, rng: random.Random) -> list[dict[str, Any]]:
    kinds = [name for name, _ in MIX]
    weights = [share for _, share in MIX]
    now = int(time.time())
    result = []
    for n in range(total):
        kind = rng.choices(kinds, weights)[0]
        reader = rng.randrange(subscribers) + 1
        event: dict[str, Any] = {
            "sg_event_id": f"evt-{n}-{rng.getrandbits(32):08x}",
            "event": kind,
            "email": f"reader{reader - 1}@example.net",
            "timestamp": now - rng.randrange(3600),
            "newsletter_issue": SLUG,
            "newsletter_batch": f"b{reader // 1000}",
            "newsletter_delivery": str(reader),
        }
        if kind == "click":
            event["url"] = f"https://news.example.org/story-{rng.randrange(20)}"
        elif kind == "bounce":
            event.update(type=rng.choice(["bounce", "blocked"]), reason="550 5.1.1 user unknown")
        elif kind == "dropped":
            event["reason"] = "Bounced Address"
        result.append(event)
    return result


def one_run(args: argparse.Namespace, folder: Path) -> tuple[float, dict[str, int]]:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from newsletter.config import load_settings
    from newsletter.web.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    config = make_project(folder, args.subscribers, "http://127.0.0.1:9", 1000, args.postgres)
    import yaml

    url = yaml.safe_load(config.read_text(encoding="utf-8"))["database"]["url"]
    seed_ledger(url, args.subscribers)
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    os.environ[KEY_ENV] = base64.b64encode(der).decode("ascii")
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data.setdefault("web", {})["sendgrid_webhook"] = {"public_key_env": KEY_ENV, "max_age_seconds": 3600}
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    settings = load_settings(config)
    events = make_events(args.events, args.subscribers, random.Random(14))
    stamp = str(int(time.time()))
    requests = []
    for start in range(0, len(events), args.batch):
        body = json.dumps(events[start : start + args.batch]).encode("utf-8")
        signature = private.sign(stamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
        headers = {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode("ascii"),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
            "Content-Type": "application/json",
        }
        requests.append((body, headers))
    totals = {"recorded": 0, "duplicates": 0, "reconciled": 0}
    app = create_app(settings, secret="bench-secret-" + "x" * 32)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        client.get("/healthz")
        started = time.perf_counter()
        for body, headers in requests:
            answer = client.post("/webhooks/sendgrid", content=body, headers=headers)
            if answer.status_code != 200:
                raise SystemExit(f"webhook answered {answer.status_code}: {answer.text}")
            for key in totals:
                totals[key] += answer.json()[key]
        wall = time.perf_counter() - started
    return wall, totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--postgres", help="a PostgreSQL server URL (a fresh schema per run, dropped at exit)")
    args = parser.parse_args()
    walls = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            wall, totals = one_run(args, Path(tmp))
        walls.append(wall)
        print(f"  run: {wall:.2f} s, {totals}")
    engine_name = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"{engine_name}: {args.events:,} events in requests of {args.batch:,}: median {statistics.median(walls):.2f} s "
        f"(min {min(walls):.2f}, max {max(walls):.2f}), {args.events / statistics.median(walls):,.0f} events/s; "
        "target <= 20 s"
    )


if __name__ == "__main__":
    main()
