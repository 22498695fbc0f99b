"""Benchmark: building the example issue.

    python bench/bench_build.py [--runs 50] [--process-runs 10]

1. in-process: render + inline + text + checks + MIME for one recipient, median of N,
   the build cache emptied before each (the first, cold build is reported apart: it
   compiles the templates and imports premailer);
2. the whole `newsletter build` process, cold start included, median of M, in a
   temporary project (the example issue, the shipped templates):
   a. with `render_check.on_build: off`, the email built before (the build cache holds
      its compiled templates and HTML: an editor building again, the weekly job after
      the preview);
   b. with `render_check.on_build: auto` and the report recorded for this exact HTML
      (the first build runs the check in Chromium; the next ones reuse its check.json);
   c. as a, the build cache emptied before each run (an email never built before:
      MJML and premailer run, premailer is imported);
3. `newsletter --help`, median of M.
Targets (issue 15): 2a and 2b <= 0.30 s, --help <= 0.15 s (issue 2: in-process <= 60 ms).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from newsletter import buildcache, rendercheck

ROOT = Path(__file__).resolve().parent.parent
ISSUE = ROOT / "issues" / "2024-10-25.yaml"


def in_process(runs: int) -> tuple[float, float]:
    """The whole pipeline each time: the build cache is emptied before every build, so
    MJML and premailer run (premailer imported and warm after the first)."""
    from newsletter import issuefile, render
    from newsletter.config import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_settings(ROOT / "config.yaml", env={})
        settings = loaded.model_copy(update={"output": loaded.output.model_copy(update={"dir": Path(tmp)})})
        recipient = render.sample_recipient(settings)

        def once() -> float:
            shutil.rmtree(Path(tmp) / buildcache.CACHE_FOLDER / "html", ignore_errors=True)
            start = time.perf_counter()
            built = render.build_issue(issuefile.load(ISSUE), settings)
            render.personalize(built.email, recipient).as_bytes()
            return time.perf_counter() - start

        cold = once()
        return cold, statistics.median(once() for _ in range(runs))


def _project(folder: Path, on_build: str) -> Path:
    """A project in ``folder``: the shipped templates, the example issue, a config whose
    paths point there and whose render check runs ``on_build``."""
    shutil.copytree(ROOT / "templates", folder / "templates")
    (folder / "issues").mkdir()
    shutil.copy(ISSUE, folder / "issues")
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    config["render_check"]["on_build"] = on_build
    config["database"] = {"url": f"sqlite:///{folder / 'newsletter.db'}"}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _timed(command: list[str], before: Callable[[], None] = lambda: None) -> float:
    before()
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def whole_process(runs: int, on_build: str, cold_cache: bool = False) -> float:
    """Median seconds of ``newsletter build``, after one build not counted (it fills the
    build cache and, with the check on, records the render check's report)."""
    exe = Path(sys.executable).parent / "newsletter"
    with tempfile.TemporaryDirectory() as tmp:
        config = _project(Path(tmp), on_build)
        out = Path(tmp) / "build"
        command = [
            str(exe),
            "--config",
            str(config),
            "build",
            str(Path(tmp) / "issues" / ISSUE.name),
            "--out",
            str(out),
        ]
        subprocess.run(command, check=True, capture_output=True)
        empty = (
            (lambda: shutil.rmtree(out / buildcache.CACHE_FOLDER, ignore_errors=True)) if cold_cache else (lambda: None)
        )
        return statistics.median(_timed(command, empty) for _ in range(runs))


def _line(label: str, figure: str, target: str = "") -> None:
    print(f"{label:<62} {figure:>10}   {target}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--process-runs", type=int, default=10)
    args = parser.parse_args()
    m = args.process_runs
    cold, warm = in_process(args.runs)
    _line("in-process build, first (cold)", f"{cold * 1000:.1f} ms")
    _line(f"in-process build, median of {args.runs}", f"{warm * 1000:.1f} ms", "(target <= 60 ms)")
    _line(f"`newsletter build`, check off, median of {m}", f"{whole_process(m, 'off'):.3f} s", "(target <= 0.30 s)")
    missing = rendercheck.chromium_missing()
    if missing is None:
        stored = whole_process(m, "auto")
        _line(f"`newsletter build`, check report stored, median of {m}", f"{stored:.3f} s", "(target <= 0.30 s)")
    else:
        _line("`newsletter build`, check report stored", "-", f"(not measured: {missing})")
    first = whole_process(m, "off", cold_cache=True)
    _line(f"`newsletter build`, check off, empty build cache, median of {m}", f"{first:.3f} s")
    exe = Path(sys.executable).parent / "newsletter"
    helped = statistics.median(_timed([str(exe), "--help"]) for _ in range(m))
    _line(f"`newsletter --help`, median of {m}", f"{helped:.3f} s", "(target <= 0.15 s)")


if __name__ == "__main__":
    main()
