"""Benchmark: the SMTP backend sending the example issue (~45 KB of HTML) to a local
aiosmtpd server (its Sink handler, in its own process).

    python bench/bench_smtp.py [-n 5000] [--connections 4] [--batch 500]

Target (issue 5): >= 500 messages a second on a 2-core machine.

    python bench/bench_smtp.py --send [-n 20000] [--postgres URL]

measures the whole send job instead: one `newsletter send` process of the issue to n
subscribers over SMTP, with its ledger (SQLite, or a fresh database on the PostgreSQL
server): messages a second (n / the process's wall time, its start-up and the freeze of
the audience included) and the process's CPU a message. This is where per-message
outcomes and "started" marks are written to the ledger as the messages go.

    python bench/bench_smtp.py --vs DIR [--pairs 2] [--send ...]

compares this code with another checkout (DIR, e.g. a `git worktree` of the commit
before a change), alternating before (DIR) and after (this checkout), A B A B: each
measurement runs in a process of its own importing that checkout's `newsletter`
(``PYTHONPATH``), with its own config and issue; with ``--send``, on a database made by
that checkout's migrations, fresh for every run (see bench/bench_send.py's ``--vs``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ISSUE = "issues/2024-10-25.yaml"


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


class SmtpServer:
    """aiosmtpd with its Sink handler in a process of its own; ``cpu`` once stopped."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.port}", "-c", "aiosmtpd.handlers.Sink"]
        )
        self.cpu = 0.0
        wait_for(self.port)

    def stop(self) -> None:
        self.process.terminate()
        _pid, _status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = 0
        self.cpu = usage.ru_utime + usage.ru_stime

    def __enter__(self) -> SmtpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.returncode is None:
            self.stop()


def measure_backend(code: Path, n: int, connections: int, batch: int) -> dict[str, Any]:
    """The backend alone (``SmtpSender.send``, no ledger), in this process, with the
    checkout ``code``'s `newsletter` (already first on sys.path)."""
    from newsletter import issuefile, render
    from newsletter.config import SmtpBackend, load_settings
    from newsletter.models import Recipient
    from newsletter.senders.base import Batch, Delivery
    from newsletter.senders.smtp import SmtpSender

    settings = load_settings(code / "config.yaml", env={})
    email = render.build_issue(issuefile.load(code / ISSUE), settings).email
    with SmtpServer() as server:
        sender = SmtpSender(
            SmtpBackend(
                host="127.0.0.1", port=server.port, security="none", connections=connections, timeout_seconds=30
            )
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
            for k in range(n)
        ]
        sent = 0
        cpu = time.process_time()
        start = time.perf_counter()
        for i in range(0, n, batch):
            result = sender.send(
                Batch(issue=email.slug, batch_id=f"bench-{i}", email=email, deliveries=everyone[i : i + batch])
            )
            sent += len(result.sent)
            if result.rejected or result.retry:
                print(f"not sent: {len(result.rejected)} rejected, {len(result.retry)} to retry", file=sys.stderr)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        sender.close()
        server.stop()
    size = len(render.personalize(email, everyone[0].recipient).as_bytes())
    return {"sent": sent, "wall": elapsed, "cpu": cpu, "server_cpu": server.cpu, "size": size}


def backend_in_process(code: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``measure_backend`` in a process of its own that imports ``code``'s `newsletter`."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(code), "-n", str(args.n)]
    command += ["--connections", str(args.connections), "--batch", str(args.batch)]
    with tempfile.TemporaryDirectory() as tmp:  # not a checkout: nothing else named newsletter there
        result = subprocess.run(
            command, env={**os.environ, "PYTHONPATH": str(code)}, cwd=tmp, capture_output=True, text=True
        )
    if result.returncode != 0:
        raise SystemExit(f"the measurement failed ({code}):\n{result.stdout}\n{result.stderr}")
    sys.stderr.write(result.stderr)
    return dict(json.loads(result.stdout.splitlines()[-1]))


def _smtp_config(folder: Path, code: Path, url: str, *, port: int, connections: int, batch: int) -> Path:
    """``code``'s config.yaml with the SMTP backend pointed at the local server."""
    config = yaml.safe_load((code / "config.yaml").read_text(encoding="utf-8"))
    config["database"] = {"url": url}
    config["render_check"] = {"on_send": "off"}  # the send is measured here, not the browser check
    config["delivery"].update(backend="smtp", batch_size=batch, max_retries=2)
    config["delivery"]["smtp"] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "connections": connections,
        "timeout_seconds": 30,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def measure_send(bench: Any, side: str, args: argparse.Namespace) -> dict[str, Any]:
    """One `newsletter send` of ``side`` to ``args.n`` subscribers over SMTP."""
    from functools import partial

    from bench.bench_send import concurrent_sends

    with SmtpServer() as server:
        configure = partial(_smtp_config, port=server.port, connections=args.connections, batch=args.batch)
        with bench.project(side, configure) as config:
            timed = concurrent_sends(config, 1, bench.sides[side])
        server.stop()
    return {"sent": args.n, "wall": timed.wall, "cpu": timed.cpu, "server_cpu": server.cpu, "peak": timed.peak}


def _line(label: str, figures: dict[str, Any]) -> str:
    sent = figures["sent"]
    peak = f"  peak {figures['peak']:.1f} MB" if "peak" in figures else ""
    return (
        f"{label}: {sent:,} messages in {figures['wall']:6.2f} s: {sent / figures['wall']:6,.0f} messages/s  "
        f"CPU a message: sender {figures['cpu'] / sent * 1000:.2f} ms, aiosmtpd "
        f"{figures['server_cpu'] / sent * 1000:.2f} ms{peak}"
    )


def versus(args: argparse.Namespace) -> None:
    before = Path(args.vs).resolve()
    if not (before / "newsletter" / "__init__.py").is_file():
        raise SystemExit(f"--vs {args.vs}: not a checkout of this project (no newsletter/__init__.py)")
    sides = {"before": before, "after": ROOT}
    what = f"the send job, ledger on {'PostgreSQL' if args.postgres else 'SQLite'}" if args.send else "the backend"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"smtp, {what}: {args.n:,} messages, {args.connections} connections; before: {before}, after: {ROOT}; "
        f"{args.pairs} pairs, A B A B; load average {load} ({os.cpu_count()} CPUs)",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        bench = None
        if args.send:
            from bench.bench_send import Versus

            bench = Versus(before, args.n, args.postgres, Path(tmp))
        try:
            for pair in range(1, args.pairs + 1):
                for side, code in sides.items():
                    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                    figures = measure_send(bench, side, args) if bench else backend_in_process(code, args)
                    results[side].append(figures)
                    print(f"{_line(f'pair {pair} {side:>6}', figures)}  (load before {load})", flush=True)
        finally:
            if bench is not None:
                bench.close()
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rate, cpu = {}, {}
    for side, runs in results.items():
        rate[side] = statistics.median(r["sent"] / r["wall"] for r in runs)
        cpu[side] = statistics.median(r["cpu"] / r["sent"] * 1000 for r in runs)
        peak = f", peak {max(r['peak'] for r in runs):.1f} MB" if "peak" in runs[0] else ""
        print(f"{side:>6}: median {rate[side]:,.0f} messages/s, sender CPU {cpu[side]:.2f} ms a message{peak}")
    paired = [
        (a["sent"] / a["wall"]) / (b["sent"] / b["wall"])
        for a, b in zip(results["after"], results["before"], strict=True)
    ]
    print(
        f"after/before: messages/s {rate['after'] / rate['before']:.3f} (pair by pair "
        f"{', '.join(f'{r:.3f}' for r in paired)}), sender CPU a message {cpu['after'] / cpu['before']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, help="messages to send (default 5000; with --send 20000)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--send", action="store_true", help="the whole `newsletter send` job, with its ledger")
    parser.add_argument("--postgres", metavar="URL", help="with --send: the ledger on this PostgreSQL server")
    parser.add_argument("--vs", metavar="DIR", help="compare with the checkout DIR (before), A B A B")
    parser.add_argument("--pairs", type=int, default=2, help="with --vs: before/after pairs (default 2)")
    parser.add_argument("--worker", metavar="DIR", help=argparse.SUPPRESS)  # one measurement of DIR's code, as JSON
    args = parser.parse_args()
    if args.n is None:
        args.n = 20_000 if args.send else 5000
    if args.postgres and not args.send:
        parser.error("--postgres needs --send (the backend alone uses no database)")
    if args.worker:
        sys.path.insert(0, str(Path(args.worker).resolve()))
        print(json.dumps(measure_backend(Path(args.worker).resolve(), args.n, args.connections, args.batch)))
        return
    if args.vs:
        versus(args)
        return
    if args.send:
        from bench.bench_send import Versus

        with tempfile.TemporaryDirectory() as tmp:
            bench = Versus(None, args.n, args.postgres, Path(tmp))
            try:
                figures = measure_send(bench, "after", args)
            finally:
                bench.close()
        print(_line("smtp, the send job", figures) + " (target >= 500 messages/s)")
        return
    figures = measure_backend(ROOT, args.n, args.connections, args.batch)
    print(
        f"smtp: {figures['sent']:,} messages of {figures['size']:,} bytes in {figures['wall']:.2f} s over "
        f"{args.connections} connections: {figures['sent'] / figures['wall']:,.0f} messages/s (target >= 500)"
    )
    print(
        f"CPU per message: backend {figures['cpu'] / figures['sent'] * 1000:.2f} ms, aiosmtpd "
        f"{figures['server_cpu'] / figures['sent'] * 1000:.2f} ms (2 cores shared with anything else running)"
    )


if __name__ == "__main__":
    main()
