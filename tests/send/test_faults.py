"""The fault matrix: 20,000 recipients through real `newsletter send` processes to a
SendGrid stand-in that misbehaves on a fifth of its requests (late answers, connections
closed before or after reading, refused recipients, 429, 5xx), with SIGKILL at ten random
moments, resumed until settled. Ambiguous batches are settled as in production: the
signed event webhook for what the server accepted, an operator's `--settle-ambiguous
resend --batch ID` for what it did not. Judged by what the server accepted: nobody gets
two copies without having been reported ambiguous, and nobody is lost. FAULT_SEED=n
replays a run's fault draws and kill points (not its threads' timing)."""

from __future__ import annotations

import os
import random
import re
import time
from collections import Counter

import pytest

from newsletter import issuefile
from newsletter.store import ledger
from tests.senders.conftest import SendgridStub

from .conftest import bulk_subscribers
from .test_crash import SLUG, kill_during, rows_in, run_send, sendgrid_config, signed_webhook, start_send

pytestmark = pytest.mark.slow

RECIPIENTS = 20_000
FAULT_RATE = 0.2
KILLS = 10
MAX_RUNS = 40


def test_faults_and_kills_settle_with_each_recipient_sent_once(
    write_config, database_url, engine, issue_path, monkeypatch, sendgrid_sink: SendgridStub
) -> None:
    started = time.monotonic()
    seed = int(os.environ.get("FAULT_SEED") or random.randrange(1_000_000))
    rng = random.Random(seed)
    emails = bulk_subscribers(engine, RECIPIENTS)
    stub = sendgrid_sink
    stub.inject(FAULT_RATE, seed)
    stub.late_seconds, stub.retry_after = 1.0, "0"
    config = sendgrid_config(
        write_config, database_url, stub, max_retries=3, sendgrid={"batch_size": 500, "timeout_seconds": 0.5}
    )
    reported: set[str] = set()  # every address a run reported ambiguous
    kills = runs = resent = settled_by_events = 0
    options: tuple[str, ...] = ()
    with signed_webhook(config, engine, monkeypatch) as post:
        while True:
            runs += 1
            assert runs <= MAX_RUNS, f"seed {seed}: not settled after {MAX_RUNS} runs"
            proc = start_send(config, issue_path, *options)
            if kills < KILLS:  # anywhere from start-up to a few requests into the run
                kills += kill_during(proc, stub, rng.randint(0, 3), rng.uniform(0, 0.1))
            output, _ = proc.communicate(timeout=120)
            if settled := re.search(r"settled ([\d,]+) ambiguous recipients", output):
                resent += int(settled.group(1).replace(",", ""))
            send = ledger.get_send(engine, SLUG)
            if send is None:  # killed before the audience was frozen
                continue
            ambiguous = rows_in(engine, send.id, "ambiguous")
            reported |= {row.email for row in ambiguous}
            # What SendGrid's webhook posts for the batches it accepted.
            settled_by_events += post(
                stub.events(rng.choice(("processed", "delivered")), batches={row.batch_id for row in ambiguous})
            )
            # The operator checks a batch left against the provider's record: nothing of it
            # was accepted, so it is sent again (by batch: `--settle-ambiguous resend` alone
            # also takes batches nobody was shown, see test_crash).
            accepted = {
                (p["custom_args"]["newsletter_batch"], int(p["custom_args"]["newsletter_delivery"]))
                for p in stub.delivered
            }
            left = rows_in(engine, send.id, "ambiguous")
            assert not [row for row in left if (row.batch_id, row.id) in accepted], (
                f"seed {seed}: ambiguous rows whose events arrived were not settled"
            )
            options = ("--settle-ambiguous", "resend", "--batch", left[0].batch_id) if left else ()
            if proc.returncode == 0 or ledger.counts(engine, send.id).settled:
                break
        if proc.returncode != 0:  # the events settled the last ones: the operator reconciles
            code, output = run_send(config, issue_path, "--reconcile")
            assert code == 0, f"seed {seed}: {output}"

    counts = ledger.counts(engine, send.id)

    copies = Counter(stub.received)
    twice = {address for address, n in copies.items() if n > 1}
    rejected = {row.email for row in rows_in(engine, send.id, "rejected")}
    assert stub.faults is not None
    faults = ", ".join(f"{n} {kind}" for kind, n in sorted(stub.faults.drawn.items()))
    figures = (
        f"seed {seed}: {runs} runs, {kills} killed, {stub.count} requests ({faults}), "
        f"{len(reported)} reported ambiguous ({settled_by_events} settled by events, {resent} resent), "
        f"{len(rejected)} refused, {len(twice)} with two copies, {time.monotonic() - started:.1f} s"
    )
    print(figures)
    assert kills == KILLS, figures
    assert not twice - reported, f"{figures}: two copies without a report: {sorted(twice - reported)[:5]}"
    assert not twice, f"{figures}: the operator resent only what the server had not accepted"
    assert counts.ambiguous == counts.pending == counts.in_flight == counts.skipped == 0, figures
    assert counts.sent + counts.rejected == RECIPIENTS, figures
    # Nobody lost: everyone has their one copy, or SendGrid refused their address (and
    # they were told so: rejected, with no copy).
    assert rejected <= stub.refused and not rejected & set(copies), figures
    assert set(copies) | rejected == set(emails), figures
    assert issuefile.load(issue_path).status == "sent", figures
