"""Benchmark: the SMTP backend sending the example issue (~45 KB of HTML) to a local
aiosmtpd server (its Sink handler, in its own process).

    python bench/bench_smtp.py [-n 5000] [--connections 4] [--batch 500]

Target (issue 5): >= 500 messages a second on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ISSUE = ROOT / "issues" / "2024-10-25.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"aiosmtpd did not start on port {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="messages to send")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()

    from newsletter import issuefile, render
    from newsletter.config import SmtpBackend, load_settings
    from newsletter.models import Recipient
    from newsletter.senders.base import Batch, Delivery
    from newsletter.senders.smtp import SmtpSender

    settings = load_settings(ROOT / "config.yaml", env={})
    email = render.build_issue(issuefile.load(ISSUE), settings).email
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", "-c", "aiosmtpd.handlers.Sink"]
    )
    try:
        wait_for(port)
        sender = SmtpSender(
            SmtpBackend(host="127.0.0.1", port=port, security="none", connections=args.connections, timeout_seconds=30)
        )
        everyone = [
            Delivery(
                key=k,
                recipient=Recipient(
                    email=f"reader{k}@example.net",
                    name=f"Reader {k}",
                    unsubscribe_url=f"https://news.example.org/unsubscribe/token-{k:08d}",
                ),
            )
            for k in range(args.n)
        ]
        sent = 0
        cpu = time.process_time()
        start = time.perf_counter()
        for i in range(0, args.n, args.batch):
            result = sender.send(
                Batch(issue=email.slug, batch_id=f"bench-{i}", email=email, deliveries=everyone[i : i + args.batch])
            )
            sent += len(result.sent)
            if result.rejected or result.retry:
                print(f"not sent: {len(result.rejected)} rejected, {len(result.retry)} to retry")
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        sender.close()
    finally:
        server.terminate()
        server.wait()
    children = os.times()
    server_cpu = children.children_user + children.children_system
    size = len(render.personalize(email, everyone[0].recipient).as_bytes())
    rate = sent / elapsed
    print(
        f"smtp: {sent:,} messages of {size:,} bytes in {elapsed:.2f} s over "
        f"{args.connections} connections: {rate:,.0f} messages/s (target >= 500)"
    )
    print(
        f"CPU per message: backend {cpu / sent * 1000:.2f} ms, aiosmtpd {server_cpu / sent * 1000:.2f} ms "
        f"(2 cores shared with anything else running)"
    )


if __name__ == "__main__":
    main()
