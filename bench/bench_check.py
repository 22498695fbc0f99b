"""Benchmark: the render check (issue 11).

    python bench/bench_check.py [--runs 5] [--build-runs 50]

1. `newsletter check` on the example issue as a whole process, a fresh output folder
   each run (so nothing recorded is reused): Chromium starts, four renders (375/600 px,
   light/dark), axe-core, screenshots, the caniemail report. Median of N.
2. the same check in-process (`rendercheck.run_check`, Playwright and Chromium start
   included), median of N;
3. the build in-process (render + inline + text + checks + MIME), median of M: the
   render check must not slow it.
Targets: `newsletter check` <= 3 s on this machine; build in-process <= 40 ms.
Also: farm-bench -n 5 -- .venv/bin/newsletter check issues/2024-10-25.yaml -o /tmp/chk
(the second and later runs there reuse the recorded report: give each run its own -o).
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
sys.path.insert(0, str(ROOT))


def check_process(runs: int) -> float:
    exe = Path(sys.executable).parent / "newsletter"
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run(
                [str(exe), "--config", str(ROOT / "config.yaml"), "check", str(ISSUE), "--out", out],
                check=True,
                capture_output=True,
            )
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_in_process(runs: int) -> float:
    from newsletter import issuefile, render, rendercheck
    from newsletter.config import load_settings

    settings = load_settings(ROOT / "config.yaml", env={})
    built = render.build_issue(issuefile.load(ISSUE), settings)
    html, _ = render.personalize_parts(built.email, render.sample_recipient(settings))
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            rendercheck.run_check(html, Path(out), settings.render_check.chromium)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--build-runs", type=int, default=50)
    args = parser.parse_args()
    from bench.bench_build import in_process

    _cold, build = in_process(args.build_runs)
    proc = check_process(args.runs)
    inproc = check_in_process(args.runs)
    print(f"`newsletter check`, median of {args.runs:<3}:   {proc:7.2f} s    (target <= 3 s)")
    print(f"render check in-process, median of {args.runs:<3}: {inproc:5.2f} s")
    print(f"build in-process, median of {args.build_runs:<3}:    {build * 1000:7.1f} ms   (target <= 40 ms)")


if __name__ == "__main__":
    main()
