"""A throw-away PostgreSQL cluster (Debian's initdb and pg_ctl, run as the postgres user
when the suite runs as root) on 127.0.0.1 and a free port, for tests that stop, restart or
cut off the database server; the suite's shared server on port 5432 is never touched."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal

import psycopg
import pytest

from tests.senders.conftest import free_port

__all__ = ["PgCluster", "RestartThread", "StopMode", "bin_dir", "missing_reason", "pg_cluster", "require"]

StopMode = Literal["fast", "immediate"]
POSTGRES_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"  # the OS account the server runs as when the suite runs as root
START_LIMIT = 30  # seconds pg_ctl waits for the server to accept connections (a deadline)
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'16MB'",
    "max_connections": "20",
    "max_wal_size": "'64MB'",
    "logging_collector": "off",
    "log_min_messages": "warning",
}


def _version(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in path.name.split("."))
    except ValueError:
        return (-1,)


def bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb and pg_ctl, or None."""
    if not POSTGRES_ROOT.is_dir():
        return None
    found = [
        d / "bin"
        for d in POSTGRES_ROOT.iterdir()
        if (d / "bin" / "initdb").is_file() and (d / "bin" / "pg_ctl").is_file() and _version(d) >= (0,)
    ]
    return max(found, key=lambda b: _version(b.parent), default=None)


def _as_root() -> bool:
    return os.geteuid() == 0


def missing_reason() -> str | None:
    """Why a throw-away cluster cannot run here, or None."""
    if bin_dir() is None:
        return (
            f"PostgreSQL's server binaries are not installed (no {POSTGRES_ROOT}/<version>/bin/initdb "
            "and pg_ctl; apt-get install postgresql)"
        )
    if _as_root():
        if shutil.which("runuser") is None:
            return "runuser is missing: needed to run initdb and pg_ctl as the postgres user (the suite runs as root)"
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"no {SERVER_USER} OS user to run the server as (postgres refuses to run as root)"
    return None


class RestartThread(threading.Thread):
    """A restart running in the background; ``join`` re-raises the error it ended with,
    so a failed restart fails the test instead of becoming an unhandled-thread warning."""

    def __init__(self, cluster: PgCluster, down_seconds: float, mode: StopMode) -> None:
        super().__init__(name=f"pgcluster-restart-{cluster.port}", daemon=True)
        self.cluster, self.down_seconds, self.mode = cluster, down_seconds, mode
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.cluster.restart(self.down_seconds, self.mode)
        except BaseException as exc:  # handed to join()
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class PgCluster:
    """A PostgreSQL cluster in a new temporary folder: trust auth for ``postgres``, TCP on
    127.0.0.1 only, its unix socket in the folder. ``start`` creates it the first time;
    ``close`` stops it and deletes the folder. The port stays the same across restarts."""

    def __init__(self, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        reason, binaries = missing_reason(), bin_dir()
        if reason is not None or binaries is None:
            raise RuntimeError(reason)
        self.bin = binaries
        self.port = port or free_port()
        self.settings = {**SETTINGS, **(settings or {})}
        self.folder = Path(tempfile.mkdtemp(prefix="newsletter-pgcluster-"))
        self.data = self.folder / "data"
        self.logfile = self.folder / "postgres.log"
        self.folder.chmod(0o700)
        if _as_root():
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        self._lock = threading.Lock()  # one start/stop at a time (a background restart)
        self._restarts: list[RestartThread] = []

    @property
    def url(self) -> str:
        """A SQLAlchemy URL for the cluster's ``postgres`` database as ``postgres``."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    # --- server control ----------------------------------------------------------------

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if _as_root():
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        # cwd: the suite's working folder may be one the postgres user cannot enter
        done = subprocess.run(command, cwd=self.folder, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            output = (done.stdout + done.stderr).strip()
            raise RuntimeError(f"{args[0]} {args[1]} failed ({done.returncode}): {output}\n{self.log()[-2000:]}")
        return done

    def _initdb(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"
        )
        lines = [f"{name} = {value}" for name, value in self.settings.items()]
        lines += [f"port = {self.port}", f"unix_socket_directories = '{self.folder}'"]
        with (self.data / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n".join(lines) + "\n")

    def is_running(self) -> bool:
        return self.data.is_dir() and self._run("pg_ctl", "status", "-D", str(self.data), check=False).returncode == 0

    def start(self) -> None:
        """Start the server (creating the cluster the first time) and wait until it
        accepts connections. Starting a running server does nothing."""
        with self._lock:
            if not (self.data / "PG_VERSION").is_file():
                self._initdb()
            elif self.is_running():
                return
            self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", str(START_LIMIT))

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server and wait until it is gone: ``fast`` ends the sessions and shuts
        down cleanly, ``immediate`` kills everything (crash recovery at the next start).
        Stopping a server that is not running does nothing."""
        with self._lock:
            if self.is_running():
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", str(START_LIMIT))

    def restart(self, down_seconds: float = 0.0, mode: StopMode = "fast") -> None:
        """Stop, stay down ``down_seconds``, start again."""
        self.stop(mode)
        time.sleep(down_seconds)
        self.start()

    def restart_in_background(self, down_seconds: float = 0.0, mode: StopMode = "fast") -> RestartThread:
        """``restart`` in a started thread; its ``join()`` re-raises a failed restart."""
        thread = RestartThread(self, down_seconds, mode)
        self._restarts.append(thread)
        thread.start()
        return thread

    def terminate_backends(self, application_name: str | None = None) -> int:
        """pg_terminate_backend on every client backend but this call's own (or only those
        with ``application_name``), waiting until each has exited; how many were ended."""
        query = """
            SELECT count(*) FILTER (WHERE pg_terminate_backend(pid{wait})) FROM pg_stat_activity
            WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
              AND (%(name)s::text IS NULL OR application_name = %(name)s::text)
        """
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname="postgres",
            application_name="pgcluster-admin",
            autocommit=True,
            connect_timeout=5,
        ) as conn:
            wait = ", 5000" if conn.info.server_version >= 140000 else ""  # waiting needs PostgreSQL 14
            row = conn.execute(query.format(wait=wait), {"name": application_name}).fetchone()
        return int(row[0]) if row else 0

    def log(self) -> str:
        """The server's log so far."""
        try:
            return self.logfile.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Wait for background restarts, stop the server (immediately: nothing is kept)
        and delete the folder; then re-raise a background restart's error nobody joined."""
        try:
            for thread in self._restarts:
                threading.Thread.join(thread, START_LIMIT * 2)
            if self.folder.is_dir():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
        errors = [thread.error for thread in self._restarts if thread.error is not None]
        self._restarts.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> PgCluster:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def require() -> None:
    """Skip the calling test when a cluster cannot run here, or fail it when the
    environment variable CI is set (CI installs PostgreSQL)."""
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (required when CI is set)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A running throw-away cluster for the session (one per xdist worker); skips without
    the server binaries, unless the environment variable CI is set: then it fails."""
    require()
    with PgCluster() as cluster:
        yield cluster
