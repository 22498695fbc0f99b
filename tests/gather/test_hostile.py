"""``newsletter gather`` against servers that misbehave on purpose, on 127.0.0.1: stacked
and bomb compression, headers and bodies dripped a byte at a time, a 304 with nothing
cached, endless redirects, 1 GB bodies with and without a length, wrong charsets, a
leading newline before ``<?xml`` and an entity DOCTYPE hidden behind a comment.

Each case runs the real command in a child process and checks its exit code, its one-line
message naming the URL, its wall time from its first request to its exit (under the
deadline plus 2 s), its peak memory
(under 300 MB, from the child's own ``ru_maxrss``) and that the issue file already there
is byte for byte what it was.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.helpers.tls import Certificate, self_signed

from .feedmaker import rss, rss_item

DEADLINE = 2.0  # sources.fetch.timeout_seconds in these tests
AS_OF = "2024-10-25T21:00:00Z"
MAX_RSS_MB = 300
NEWSLETTER = Path(sys.executable).with_name("newsletter")

# Runs the command as its only child, under a 3 GB address-space cap (a regression then
# fails fast instead of taking the machine), and reports the child's own peak memory.
MEASURE = r"""
import json, resource, subprocess, sys, time
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
start = time.monotonic()
done = subprocess.run(sys.argv[1:], preexec_fn=cap, capture_output=True, text=True, timeout=60)
print(json.dumps({
    "code": done.returncode, "out": done.stdout, "err": done.stderr,
    "seconds": time.monotonic() - start, "ended_at": time.monotonic(),
    "max_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float
    ended_at: float  # time.monotonic(), the same clock in every process on this machine
    max_rss_mb: float


# -- the hostile server ------------------------------------------------------------


Behaviour = Callable[[socket.socket, str, "HostileServer"], None]


class HostileServer:
    """A raw TCP server: each path has a behaviour that writes whatever it likes."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.routes: dict[str, Behaviour] = {}
        self.requests: list[str] = []
        self.first_request_at: float | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}{path}"

    def add(self, path: str, behaviour: Behaviour) -> str:
        self.routes[path] = behaviour
        return self.url(path)

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        conn = raw
        try:
            raw.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(raw, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            path = head.split(b" ", 2)[1].decode("ascii")
            if self.first_request_at is None:
                self.first_request_at = time.monotonic()
            self.requests.append(path)
            prefix = next((p for p in self.routes if path.startswith(p)), None)
            if prefix is None:
                conn.sendall(_head(404, {"Content-Length": "0"}))
                return
            self.routes[prefix](conn, path, self)
        except OSError:
            pass  # the client gave up: that is what most of these cases want
        finally:
            conn.close()
            raw.close()

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.thread.join(timeout=5)


def _head(status: int, headers: dict[str, str]) -> bytes:
    # The server closes every connection after one answer, and says so: a client reusing
    # the connection would race the close (a reset), which is not what these tests test.
    headers = {"Connection": "close", **headers}
    lines = [f"HTTP/1.1 {status} Status"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def respond(body: bytes, *, status: int = 200, **headers: str) -> Behaviour:
    def behaviour(conn: socket.socket, path: str, server: HostileServer) -> None:
        fields = {"Content-Type": "application/rss+xml", "Content-Length": str(len(body)), "Connection": "close"}
        fields.update({k.replace("_", "-"): v for k, v in headers.items()})
        conn.sendall(_head(status, fields) + body)

    return behaviour


def drip_headers(conn: socket.socket, path: str, server: HostileServer) -> None:
    head = _head(200, {"Content-Type": "application/rss+xml", "X-Padding": "x" * 10_000})
    for byte in head:
        if server.stopping.wait(0.2):
            return
        conn.sendall(bytes([byte]))


def drip_body(conn: socket.socket, path: str, server: HostileServer) -> None:
    conn.sendall(_head(200, {"Content-Type": "application/rss+xml", "Content-Length": "100000"}))
    for byte in b"<" * 100_000:
        if server.stopping.wait(0.2):
            return
        conn.sendall(bytes([byte]))


def endless_redirects(conn: socket.socket, path: str, server: HostileServer) -> None:
    hop = int(path.rsplit("/", 1)[1] or 0) + 1
    conn.sendall(_head(302, {"Location": f"/loop/{hop}", "Content-Length": "0"}))


def zeros(declare_length: bool) -> Behaviour:
    """1 GB of spaces, as fast as the client reads them."""

    def behaviour(conn: socket.socket, path: str, server: HostileServer) -> None:
        headers = {"Content-Type": "application/rss+xml", "Connection": "close"}
        if declare_length:
            headers["Content-Length"] = str(1 << 30)
        conn.sendall(_head(200, headers))
        chunk = b" " * (1 << 16)
        for _ in range((1 << 30) // len(chunk)):
            if server.stopping.is_set():
                return
            conn.sendall(chunk)

    return behaviour


@cache
def gzip_of_spaces(megabytes: int) -> bytes:
    """A valid gzip member of ``megabytes`` MB of spaces, made without compressing them
    all: one fully flushed deflate block, repeated."""
    chunk = b" " * (1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(megabytes):
        crc = zlib.crc32(chunk, crc)
    trailer = struct.pack("<II", crc, (megabytes << 20) & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + block * megabytes + deflate.flush() + trailer


def gzip_member(data: bytes) -> bytes:
    return zlib.compress(data, 9, wbits=31)


# -- fixtures and the run ------------------------------------------------------------


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.stop()


@pytest.fixture
def config(project: Path) -> Callable[..., Path]:
    """The project's config with the round-up (or a teaser) feed at ``url``."""

    def write(roundup: str | None = None, teasers: list[str] | None = None) -> Path:
        data = yaml.safe_load((project / "config.yaml").read_text(encoding="utf-8"))
        sources = data["sources"]
        if roundup is not None:
            sources["roundup"]["feed"] = roundup
        if teasers is not None:
            sources["teasers"]["feeds"] = teasers
        sources["teasers"]["on_feed_error"] = "warn"
        sources["fetch"] = {"timeout_seconds": DEADLINE, "max_bytes": 10_000_000}
        path = project / "config.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        return path

    return write


def gather(config: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    command = [str(NEWSLETTER), "--config", str(config), "gather", "--as-of", AS_OF, *args]
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *command],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return Run(**json.loads(done.stdout))


def existing_issue(project: Path) -> tuple[Path, bytes]:
    path = project / "issues" / "2024-10-25.yaml"
    return path, path.read_bytes()


def assert_refused(run: Run, server: HostileServer, url: str, reason: str) -> None:
    assert run.code == 1, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.err, run.err
    assert lines[0].startswith(f"error: {url}: "), lines[0]
    assert reason in lines[0], lines[0]
    assert_bounded(run, server)


def assert_bounded(run: Run, server: HostileServer) -> None:
    # From the first request to the exit: the deadline's part. Starting Python and
    # importing take what a busy machine gives them, hence a looser bound on the whole.
    assert server.first_request_at is not None
    held = run.ended_at - server.first_request_at
    assert held < DEADLINE + 2, f"held on {held:.1f} s after its request"
    assert run.seconds < DEADLINE + 10, f"took {run.seconds:.1f} s in all"
    assert run.max_rss_mb < MAX_RSS_MB, f"peak {run.max_rss_mb:.0f} MB"


# -- the cases -----------------------------------------------------------------------

# Each failing case runs with --force: had gather succeeded, the issue would be replaced.
FAILING = {
    "stacked gzip (1 GB inside 2 KB)": (
        lambda: respond(gzip_member(gzip_of_spaces(1024)), Content_Encoding="gzip, gzip"),
        "refused: Content-Encoding 'gzip, gzip'",
    ),
    "gzip bomb (1 GB inside 1 MB)": (
        lambda: respond(gzip_of_spaces(1024), Content_Encoding="gzip"),
        "larger than the 10,000,000-byte limit",
    ),
    "unknown encoding": (
        lambda: respond(b"\x00" * 100, Content_Encoding="compress"),
        "refused: Content-Encoding 'compress'",
    ),
    "headers dripped a byte every 0.2 s": (lambda: drip_headers, "timed out after 2 s"),
    "body dripped a byte every 0.2 s": (lambda: drip_body, "timed out after 2 s"),
    "1 GB with its Content-Length": (lambda: zeros(True), "larger than the 10,000,000-byte limit"),
    "1 GB without a Content-Length": (lambda: zeros(False), "larger than the 10,000,000-byte limit"),
    "304 with nothing cached": (
        lambda: respond(b"", status=304),
        "HTTP 304 Not Modified to a request that had nothing cached",
    ),
    "entity DOCTYPE behind a comment holding '<a'": (
        lambda: respond(
            b'<?xml version="1.0"?>\n<!-- <a href="x"> --><!DOCTYPE rss [\n'
            b'<!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">\n'
            + b"".join(
                f'<!ENTITY {n} "{("&" + p + ";") * 10}">\n'.encode()
                for p, n in zip("abcdefgh", "bcdefghi", strict=True)
            )
            + b']>\n<rss version="2.0"><channel><title>&i;</title><item><title>&i;</title>'
            b"<link>https://news.example.org/x</link></item></channel></rss>"
        ),
        "refused: the feed declares XML entities",
    ),
}


@pytest.mark.parametrize("case", list(FAILING))
def test_a_hostile_round_up_feed_fails_fast_small_and_clean(
    case: str, hostile: HostileServer, config: Callable[..., Path], project: Path
) -> None:
    make, reason = FAILING[case]
    url = hostile.add("/feed", make())
    path, before = existing_issue(project)
    run = gather(config(roundup=url), "--force")
    assert_refused(run, hostile, url, reason)
    assert path.read_bytes() == before
    assert not list((project / "issues").glob(".*.tmp"))


def test_endless_redirects_stop_after_five(hostile: HostileServer, config: Callable[..., Path], project: Path) -> None:
    url = hostile.add("/loop/", endless_redirects)
    path, before = existing_issue(project)
    run = gather(config(roundup=url), "--force")
    assert_refused(run, hostile, url, "more than 5 redirects")
    assert len(hostile.requests) == 6
    assert path.read_bytes() == before


def test_a_304_with_nothing_cached_asks_once(hostile: HostileServer, config: Callable[..., Path]) -> None:
    url = hostile.add("/feed", respond(b"", status=304))
    run = gather(config(roundup=url), "--force")
    assert_refused(run, hostile, url, "304")
    assert hostile.requests == ["/feed"]


def test_a_stacked_gzip_teaser_feed_is_skipped_with_a_warning(
    hostile: HostileServer, config: Callable[..., Path], project: Path, tmp_path: Path
) -> None:
    url = hostile.add("/teasers", respond(gzip_member(gzip_of_spaces(1024)), Content_Encoding="gzip, gzip"))
    path, before = existing_issue(project)
    out = tmp_path / "draft.yaml"
    run = gather(config(teasers=[url]), "--out", str(out))
    assert run.code == 0, run.err
    assert run.err.strip().splitlines() == [
        f"warning: {url}: refused: Content-Encoding 'gzip, gzip' (only one layer of gzip or "
        "deflate is decoded); gathered without this teaser feed",
        "warning: no new teasers this week: the issue has the round-up only",
    ]
    assert_bounded(run, hostile)
    assert out.is_file() and path.read_bytes() == before


def roundup_feed(project: Path) -> bytes:
    return (project / "samples" / "feeds" / "roundup.rss").read_bytes()


def test_a_newline_before_the_xml_declaration_is_forgiven(
    hostile: HostileServer, config: Callable[..., Path], project: Path, tmp_path: Path
) -> None:
    url = hostile.add("/feed", respond(b"\n" + roundup_feed(project)))
    out = tmp_path / "draft.yaml"
    run = gather(config(roundup=url), "--out", str(out), "--verbose")
    assert run.code == 0, run.err
    assert f"note: {url}: 1 byte of whitespace before the XML declaration ignored" in run.err
    assert run.out.startswith(f"wrote {out} (round-up,")
    assert_bounded(run, hostile)


@pytest.mark.parametrize("served", ["application/rss+xml; charset=iso-8859-1", "text/xml; charset=us-ascii"])
def test_a_wrong_charset_header_does_not_garble_the_text(
    served: str, hostile: HostileServer, config: Callable[..., Path], project: Path, tmp_path: Path
) -> None:
    title = "Diplomacy Watch: Bientôt à Genève, Kyiv’s “long” week"
    body = rss(rss_item(title, "https://news.example.org/geneve")).encode("utf-8")
    url = hostile.add("/feed", respond(body, Content_Type=served))
    out = tmp_path / "draft.yaml"
    run = gather(config(roundup=url), "--out", str(out), "--verbose")
    assert run.code == 0, run.err
    assert_bounded(run, hostile)
    charset = served.rsplit("=", 1)[1]
    assert f"note: {url}: served as charset {charset} but written in utf-8: read as utf-8" in run.err
    assert yaml.safe_load(out.read_text(encoding="utf-8"))["roundup"]["title"] == title


# -- over TLS: the handshake and the encrypted stream are under the same deadline ------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def hostile_tls(certificate: Certificate) -> Iterator[HostileServer]:
    server = HostileServer(tls=certificate.server_context())
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (respond(b"\n" + rss(rss_item("Diplomacy Watch: over TLS", "https://news.example.org/tls")).encode()), None),
        (drip_headers, "timed out after 2 s"),
        (drip_body, "timed out after 2 s"),
    ],
    ids=["a good feed", "headers dripped", "body dripped"],
)
def test_over_https_the_same_deadline_holds(
    behaviour: Behaviour,
    reason: str | None,
    hostile_tls: HostileServer,
    config: Callable[..., Path],
    certificate: Certificate,
    project: Path,
    tmp_path: Path,
) -> None:
    url = hostile_tls.add("/feed", behaviour)
    out = tmp_path / "draft.yaml"
    run = gather(config(roundup=url), "--out", str(out), env={"SSL_CERT_FILE": str(certificate.cert)})
    if reason is None:
        assert run.code == 0, run.err
        assert yaml.safe_load(out.read_text(encoding="utf-8"))["roundup"]["title"] == "Diplomacy Watch: over TLS"
        assert_bounded(run, hostile_tls)
    else:
        assert_refused(run, hostile_tls, url, reason)
        assert not out.exists()


def test_a_server_that_never_finishes_the_tls_handshake(
    hostile: HostileServer, config: Callable[..., Path], project: Path
) -> None:
    # A plain-TCP server on an https:// URL: it waits for a request the client never sends.
    url = hostile.url("/feed").replace("http://", "https://")
    path, before = existing_issue(project)
    started = time.monotonic()
    run = gather(config(roundup=url), "--force")
    assert run.code == 1 and run.err.strip().startswith(f"error: {url}: "), run.err
    assert "timed out after 2 s" in run.err
    assert run.ended_at - started < DEADLINE + 10 and run.max_rss_mb < MAX_RSS_MB
    assert path.read_bytes() == before
