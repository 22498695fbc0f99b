"""Benchmark: the preview's live reload, from saving the issue file to the new render
being served (issue 15).

    python bench/bench_reload.py [--runs 15] [--mode both|watch|poll]

Starts `newsletter serve` on a free loopback port in a temporary project (the example
issue and the shipped templates) and plays the preview page's part the way
newsletter/web/static/preview.js does:
- watch: a long poll on /preview/<slug>/changes is waiting when the file is written;
  when it answers, the page (/preview/<slug>, which builds the issue) and its frame
  (email.html) are fetched, as a reload does;
- poll: /version is fetched every 500 ms (the way before, and the fallback), the write
  falling at a random moment between two polls; then the same two fetches.
Each figure runs from just before the write to the arrival of an email.html that holds
the new text; median, min and max of N. Target: <= 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
SLUG = "2024-10-25"
POLL_SECONDS = 0.5  # preview.py's POLL_MS
MARK = "Good evening."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _project(folder: Path) -> Path:
    shutil.copytree(ROOT / "templates", folder / "templates")
    (folder / "issues").mkdir()
    shutil.copy(ROOT / "issues" / f"{SLUG}.yaml", folder / "issues")
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    config["database"] = {"url": f"sqlite:///{folder / 'newsletter.db'}"}
    config["render_check"] = {"on_build": "off", "on_send": "off"}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


class Editor:
    """The issue file and the preview as an editor's browser sees them."""

    def __init__(self, base: str, token: str, issue: Path) -> None:
        self.client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.issue = issue
        self.original = issue.read_text(encoding="utf-8")
        self.edits = 0

    def version(self) -> str:
        return str(self.client.get(f"/preview/{SLUG}/version").json()["version"])

    def save(self) -> str:
        """Write the issue with a new sentence in its intro; the text the render must show."""
        self.edits += 1
        text = f"Reload {self.edits}."
        self.issue.write_text(self.original.replace(MARK, f"{MARK} {text}", 1), encoding="utf-8")
        return text

    def reload(self, text: str) -> bool:
        """What the page does on a change: load itself, then its frame."""
        self.client.get(f"/preview/{SLUG}").raise_for_status()
        return text in self.client.get(f"/preview/{SLUG}/email.html").text


def _timed(editor: Editor, delay: float, wait_for_change: Callable[[str], None]) -> float:
    """Save the file after ``delay`` s (from another thread, as the editor's editor does)
    while ``wait_for_change`` waits as the page does; seconds from the write to the new
    render served."""
    before = editor.version()
    saved: dict[str, float | str] = {}

    def save() -> None:
        time.sleep(delay)
        saved["at"] = time.perf_counter()
        saved["text"] = editor.save()

    writer = threading.Thread(target=save)
    writer.start()
    wait_for_change(before)
    writer.join()
    if not editor.reload(str(saved["text"])):
        raise SystemExit("the reloaded preview does not show the edit")
    return time.perf_counter() - float(saved["at"])


def watch(editor: Editor) -> float:
    def wait(before: str) -> None:
        while True:
            got = editor.client.get(f"/preview/{SLUG}/changes", params={"since": before}).json()["version"]
            if got != before:
                return

    return _timed(editor, 0.3, wait)


def poll(editor: Editor) -> float:
    def wait(before: str) -> None:
        while True:
            time.sleep(POLL_SECONDS)
            if editor.version() != before:
                return

    return _timed(editor, random.uniform(0.2, 0.2 + POLL_SECONDS), wait)


def run(mode: str, runs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        config = _project(Path(tmp))
        token, port = secrets.token_urlsafe(32), _free_port()
        env = {**os.environ, "NEWSLETTER_PREVIEW_TOKEN": token, "NEWSLETTER_SECRET_KEY": secrets.token_urlsafe(48)}
        exe = Path(sys.executable).parent / "newsletter"
        server = subprocess.Popen(
            [str(exe), "--config", str(config), "serve", "--port", str(port)],
            env=env,
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            editor = Editor(f"http://127.0.0.1:{port}", token, Path(tmp) / "issues" / f"{SLUG}.yaml")
            deadline = time.monotonic() + 60
            while True:
                try:
                    editor.version()
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("newsletter serve did not start") from None
                    time.sleep(0.1)
            editor.reload("")  # warm: the first build imports premailer and compiles the templates
            measure = watch if mode == "watch" else poll
            measure(editor)  # one edit not counted
            return [measure(editor) for _ in range(runs)]
        finally:
            server.terminate()
            server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--mode", choices=["both", "watch", "poll"], default="both")
    args = parser.parse_args()
    for mode in ("watch", "poll") if args.mode == "both" else (args.mode,):
        times = run(mode, args.runs)
        print(
            f"preview reload, {mode:5s} (write -> new email.html served), median of {args.runs}: "
            f"{statistics.median(times):.3f} s  (min {min(times):.3f}, max {max(times):.3f}; target <= 0.3 s)"
        )


if __name__ == "__main__":
    main()
