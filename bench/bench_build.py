"""Benchmark: building the example issue.

    python bench/bench_build.py [--runs 50] [--process-runs 10]

1. in-process: render + inline + text + checks + MIME for one recipient, median of N
   (the first, cold build is reported apart: it compiles the templates and imports
   premailer);
2. the whole `newsletter build` process, cold start included, median of M.
Targets (issue 2): in-process <= 60 ms, whole process <= 0.6 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ISSUE = ROOT / "issues" / "2024-10-25.yaml"


def in_process(runs: int) -> tuple[float, float]:
    from newsletter import issuefile, render
    from newsletter.config import load_settings

    settings = load_settings(ROOT / "config.yaml", env={})
    recipient = render.sample_recipient(settings)

    def once() -> float:
        start = time.perf_counter()
        built = render.build_issue(issuefile.load(ISSUE), settings)
        render.personalize(built.email, recipient).as_bytes()
        return time.perf_counter() - start

    cold = once()
    return cold, statistics.median(once() for _ in range(runs))


def whole_process(runs: int) -> float:
    exe = Path(sys.executable).parent / "newsletter"
    times = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(
                [str(exe), "--config", str(ROOT / "config.yaml"), "build", str(ISSUE), "--out", out],
                check=True,
                capture_output=True,
            )
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--process-runs", type=int, default=10)
    args = parser.parse_args()
    cold, warm = in_process(args.runs)
    proc = whole_process(args.process_runs)
    print(f"in-process build, first (cold):     {cold * 1000:7.1f} ms")
    print(f"in-process build, median of {args.runs:<3}:    {warm * 1000:7.1f} ms   (target <= 60 ms)")
    print(f"`newsletter build`, median of {args.process_runs:<3}:  {proc:7.3f} s    (target <= 0.6 s)")


if __name__ == "__main__":
    main()
