"""Getting a feed's bytes: over HTTP(S) with httpx (redirects, gzip, conditional GET with
the ETag / Last-Modified and body cached between runs), or from a local path or ``file:``
URL. Hard limits hold whatever the server does: one deadline for the whole fetch (connect,
headers, body, redirects), and a cap on the decoded bytes applied inside the decoder.
Every failure is a ``FeedError`` naming the source.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import ssl
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpcore
import httpx

from newsletter.config import Fetching
from newsletter.errors import FeedError
from newsletter.yamlfile import atomic_write

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.5"
)
# Only what _decoded() can decode within the cap; httpx would also offer br/zstd.
ACCEPT_ENCODING = "gzip, deflate"
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class FetchedFeed:
    """A feed's raw bytes and what the server said about them."""

    source: str  # as configured: what error messages name
    url: str  # where the bytes came from, after redirects (a base for relative links)
    body: bytes
    content_type: str | None = None
    from_cache: bool = False  # a 304: the body is the one cached by an earlier run


def user_agent(public_url: str, override: str | None = None) -> str:
    """``newsletter/<version> (+<public_url>)``, so a publisher can tell who is asking."""
    if override:
        return override
    try:
        tool_version = version("newsletter")
    except PackageNotFoundError:  # running from a source tree that is not installed
        tool_version = "0"
    return f"newsletter/{tool_version} (+{public_url})"


def is_local(source: str) -> bool:
    return "://" not in source and not source.startswith("file:")


def _size_error(source: str, max_bytes: int) -> FeedError:
    return FeedError(f"{source}: larger than the {max_bytes:,}-byte limit (sources.fetch.max_bytes)")


class _Deadline:
    """The time left for the current fetch, shared by every socket operation in it."""

    def __init__(self) -> None:
        self.at = math.inf

    def budget(self, timeout: float | None, error: type[Exception]) -> float | None:
        left = self.at - time.monotonic()
        if left <= 0:
            raise error("the fetch deadline has passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read, write and handshake ends by the deadline: a
    server dripping its headers or body one byte at a time cannot hold the fetch."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self.inner = inner
        self.deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.deadline.budget(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        budget = self.deadline.budget(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self.inner.start_tls(ssl_context, server_hostname, budget), self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, each operation bounded by the fetch's deadline."""

    def __init__(self, deadline: _Deadline) -> None:
        self.inner = httpcore.SyncBackend()
        self.deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        budget = self.deadline.budget(timeout, httpcore.ConnectTimeout)
        stream = self.inner.connect_tcp(host, port, budget, local_address, socket_options)
        return _DeadlineStream(stream, self.deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        budget = self.deadline.budget(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self.inner.connect_unix_socket(path, budget, socket_options), self.deadline)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(min(seconds, max(0.0, self.deadline.at - time.monotonic())))


def _use_backend(client: httpx.Client, backend: httpcore.NetworkBackend) -> None:
    """Give every transport of ``client`` (direct and proxies from the environment) the
    deadline-bound sockets. httpx has no public switch for httpcore's network backend."""
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        if pool is not None and hasattr(pool, "_network_backend"):
            pool._network_backend = backend


class FeedFetcher:
    """Fetches feeds with one HTTP client; use it as a context manager."""

    def __init__(
        self,
        fetching: Fetching,
        agent: str,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.fetching = fetching
        self.cache_dir = fetching.cache_dir
        self.deadline = _Deadline()
        self._agent = agent
        self._transport = transport

    @functools.cached_property
    def client(self) -> httpx.Client:
        """The HTTP client, made at the first URL: local feeds need no TLS set-up (20 ms)."""
        client = httpx.Client(
            headers={"User-Agent": self._agent, "Accept": ACCEPT, "Accept-Encoding": ACCEPT_ENCODING},
            timeout=httpx.Timeout(self.fetching.timeout_seconds),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            transport=self._transport,
        )
        if self._transport is None:
            _use_backend(client, _DeadlineBackend(self.deadline))
        return client

    def __enter__(self) -> FeedFetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if "client" in self.__dict__:
            self.client.close()

    def fetch(self, source: str) -> FetchedFeed:
        """The bytes of the feed at ``source`` (a URL, a ``file:`` URL or a local path)."""
        source = source.strip()
        if is_local(source) or source.startswith("file:"):
            return self._read_local(source)
        scheme = urlsplit(source).scheme.lower()
        if scheme not in ("http", "https"):
            raise FeedError(f"{source}: unsupported URL scheme {scheme!r} (use http, https or file)")
        return self._get(source)

    # -- local files ---------------------------------------------------------------

    def _read_local(self, source: str) -> FetchedFeed:
        if source.startswith("file:"):
            parts = urlsplit(source)
            if parts.netloc not in ("", "localhost"):
                raise FeedError(f"{source}: file: URLs must name a local file (no host)")
            path = Path(url2pathname(unquote(parts.path)))
        else:
            path = Path(source)
        limit = self.fetching.max_bytes
        try:
            with path.open("rb") as fh:
                body = fh.read(limit + 1)
        except FileNotFoundError:
            raise FeedError(f"{source}: file not found") from None
        except IsADirectoryError:
            raise FeedError(f"{source}: is a directory, not a feed file") from None
        except OSError as exc:
            raise FeedError(f"{source}: cannot read ({exc.strerror})") from None
        if len(body) > limit:
            raise _size_error(source, limit)
        return FetchedFeed(source=source, url=path.resolve().as_uri(), body=body)

    # -- HTTP ----------------------------------------------------------------------

    def _get(self, source: str) -> FetchedFeed:
        cached = _Cache(self.cache_dir, source)
        timeout = self.fetching.timeout_seconds
        # One deadline from the first connect to the last body byte, redirects included.
        self.deadline.at = time.monotonic() + timeout
        try:
            return self._stream(source, cached.conditional_headers(), cached)
        except httpx.TimeoutException:
            raise FeedError(
                f"{source}: timed out after {timeout:g} s (sources.fetch.timeout_seconds, for the whole fetch)"
            ) from None
        except httpx.TooManyRedirects:
            raise FeedError(f"{source}: more than {MAX_REDIRECTS} redirects") from None
        except httpx.ConnectError as exc:
            raise FeedError(f"{source}: cannot connect ({_reason(exc)})") from None
        except (httpx.DecodingError, zlib.error):
            raise FeedError(f"{source}: the response cannot be decompressed") from None
        except httpx.InvalidURL as exc:
            raise FeedError(f"{source}: invalid URL ({exc})") from None
        except httpx.HTTPError as exc:
            raise FeedError(f"{source}: fetch failed ({_reason(exc)})") from None
        finally:
            self.deadline.at = math.inf

    def _stream(self, source: str, headers: dict[str, str], cached: _Cache) -> FetchedFeed:
        limit = self.fetching.max_bytes
        with self.client.stream("GET", source, headers=headers) as response:
            content_type = response.headers.get("content-type")
            if response.status_code == 304:
                body = cached.body()
                if body is not None and headers:
                    return FetchedFeed(source, str(response.url), body, cached.content_type(), True)
                if not headers:
                    raise FeedError(f"{source}: HTTP 304 Not Modified to a request that had nothing cached")
                # The cache vanished between runs: ask once more, unconditionally.
                cached.forget()
                return self._stream(source, {}, cached)
            if response.status_code >= 400:
                phrase = f" {response.reason_phrase}" if response.reason_phrase else ""
                raise FeedError(f"{source}: HTTP {response.status_code}{phrase}")
            if response.status_code != 200:
                raise FeedError(f"{source}: unexpected HTTP {response.status_code}")
            declared = response.headers.get("content-length", "").strip()
            encoding = response.headers.get("content-encoding", "")
            if declared.isdigit() and int(declared) > limit:
                raise _size_error(source, limit)
            body = b"".join(_decoded(source, encoding, response.iter_raw(), limit))
            cached.store(
                body,
                etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"),
                content_type=content_type,
            )
            return FetchedFeed(source, str(response.url), body, content_type)


def _decoded(source: str, encoding: str, raw: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """The body decoded from at most one compression layer, never more than ``limit``
    bytes: the cap is the decoder's own output limit, so a bomb never inflates in memory."""
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
        # No real feed server stacks encodings; a bomb does. Unknown ones we cannot read.
        raise FeedError(
            f"{source}: refused: Content-Encoding {encoding.strip()!r} (only one layer of gzip or deflate is decoded)"
        )
    size = 0
    if not codings:
        for chunk in raw:
            size += len(chunk)
            if size > limit:
                raise _size_error(source, limit)
            yield chunk
        return
    decoder: Any = None
    for chunk in raw:
        if decoder is None:
            decoder = zlib.decompressobj(_wbits(codings[0], chunk))
        pending = chunk
        while pending and not decoder.eof:
            out = decoder.decompress(pending, limit - size + 1)
            size += len(out)
            if size > limit:
                raise _size_error(source, limit)
            yield out
            pending = decoder.unconsumed_tail
    if decoder is not None:
        tail = decoder.flush()
        if size + len(tail) > limit:
            raise _size_error(source, limit)
        yield tail


def _wbits(coding: str, first: bytes) -> int:
    """gzip: its header; deflate: zlib-wrapped as the RFC says, or raw as some servers send."""
    if coding != "deflate":
        return 16 + zlib.MAX_WBITS
    zlib_header = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
    return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    # httpcore wraps OS errors as "[Errno 111] Connection refused"; keep the words.
    if text.startswith("[Errno") and "]" in text:
        text = text.split("]", 1)[1].strip()
    return text.splitlines()[0]


class _Cache:
    """One feed's validators and body, kept in the cache folder between runs."""

    def __init__(self, cache_dir: Path, source: str) -> None:
        key = hashlib.sha256(source.encode("utf-8")).hexdigest()[:32]
        self.meta_path = cache_dir / f"{key}.json"
        self.body_path = cache_dir / f"{key}.body"
        self.source = source
        self._meta: dict[str, str] | None = None

    def _load(self) -> dict[str, str]:
        if self._meta is None:
            try:
                data = json.loads(self.meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            valid = isinstance(data, dict) and data.get("source") == self.source
            self._meta = {k: v for k, v in data.items() if isinstance(v, str)} if valid else {}
        return self._meta

    def conditional_headers(self) -> dict[str, str]:
        meta = self._load()
        if not self.body_path.is_file():
            return {}
        headers = {}
        if meta.get("etag"):
            headers["If-None-Match"] = meta["etag"]
        if meta.get("last_modified"):
            headers["If-Modified-Since"] = meta["last_modified"]
        return headers

    def body(self) -> bytes | None:
        try:
            return self.body_path.read_bytes()
        except OSError:
            return None

    def content_type(self) -> str | None:
        return self._load().get("content_type") or None

    def forget(self) -> None:
        self._meta = {}
        self.meta_path.unlink(missing_ok=True)
        self.body_path.unlink(missing_ok=True)

    def store(self, body: bytes, *, etag: str | None, last_modified: str | None, content_type: str | None) -> None:
        try:
            if not etag and not last_modified:
                self.forget()  # nothing to revalidate with: do not keep a stale copy
                return
            meta = {
                "source": self.source,
                "etag": etag or "",
                "last_modified": last_modified or "",
                "content_type": content_type or "",
            }
            atomic_write(self.body_path, body)
            atomic_write(self.meta_path, json.dumps(meta, indent=1))
            self._meta = meta
        except OSError:
            # The cache only saves bandwidth; a read-only cache folder must not stop the week.
            pass
