"""``newsletter serve`` as a real process for end-to-end tests: started on a free
loopback port, waited for until /healthz answers, stopped at the end of the block; the
test then gets its log to check (no traceback, no secret)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.senders.conftest import free_port

STARTUP_LIMIT = 30.0  # seconds; a deadline for the server to come up, not a measurement


@dataclass
class Served:
    url: str
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the project's own variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_") and k not in ("FORWARDED_ALLOW_IPS",)}
    env.update(extra or {})
    return env


def cli(config: Path, env: Mapping[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(config), *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextmanager
def serving(config: Path, env: Mapping[str, str], log: Path, port: int | None = None) -> Iterator[Served]:
    port = port or free_port()
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "newsletter",
                "--config",
                str(config),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=dict(env),
            stdout=out,
            stderr=out,
        )
        served = Served(url=f"http://127.0.0.1:{port}", port=port, log=log)
        try:
            deadline = time.monotonic() + STARTUP_LIMIT
            while True:
                assert process.poll() is None, served.log_text()
                try:
                    if httpx.get(f"{served.url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "newsletter serve did not answer /healthz"
                time.sleep(0.1)
            yield served
        finally:
            process.terminate()
            process.wait(timeout=15)
    assert "Traceback" not in served.log_text(), served.log_text()
