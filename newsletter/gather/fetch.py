"""Getting a feed's bytes: over HTTP(S) with httpx (timeouts, redirects, gzip, a size cap,
conditional GET with the ETag / Last-Modified and body cached between runs), or from a
local path or ``file:`` URL. Every failure is a ``FeedError`` naming the source.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpx

from newsletter.config import Fetching
from newsletter.errors import FeedError
from newsletter.yamlfile import atomic_write

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.5"
)
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
    return FeedError(
        f"{source}: larger than the {max_bytes:,}-byte limit (sources.fetch.max_bytes)"
    )


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
        self.client = httpx.Client(
            headers={"User-Agent": agent, "Accept": ACCEPT},
            timeout=httpx.Timeout(fetching.timeout_seconds),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            transport=transport,
        )

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
        headers = cached.conditional_headers()
        try:
            return self._stream(source, headers, cached)
        except httpx.TimeoutException:
            raise FeedError(
                f"{source}: timed out after {self.fetching.timeout_seconds:g} s "
                "(sources.fetch.timeout_seconds)"
            ) from None
        except httpx.TooManyRedirects:
            raise FeedError(f"{source}: more than {MAX_REDIRECTS} redirects") from None
        except httpx.ConnectError as exc:
            raise FeedError(f"{source}: cannot connect ({_reason(exc)})") from None
        except httpx.DecodingError:
            raise FeedError(f"{source}: the response cannot be decompressed") from None
        except httpx.InvalidURL as exc:
            raise FeedError(f"{source}: invalid URL ({exc})") from None
        except httpx.HTTPError as exc:
            raise FeedError(f"{source}: fetch failed ({_reason(exc)})") from None

    def _stream(self, source: str, headers: dict[str, str], cached: _Cache) -> FetchedFeed:
        limit = self.fetching.max_bytes
        # httpx's timeout applies to each read; a server that drips bytes slowly must
        # still not hold the weekly job forever, hence an overall deadline too.
        deadline = time.monotonic() + self.fetching.timeout_seconds
        with self.client.stream("GET", source, headers=headers) as response:
            content_type = response.headers.get("content-type")
            if response.status_code == 304:
                body = cached.body()
                if body is not None:
                    return FetchedFeed(source, str(response.url), body, cached.content_type(), True)
                # The cache vanished between runs: ask again, unconditionally.
                cached.forget()
                return self._stream(source, {}, cached)
            if response.status_code >= 400:
                phrase = f" {response.reason_phrase}" if response.reason_phrase else ""
                raise FeedError(f"{source}: HTTP {response.status_code}{phrase}")
            if response.status_code != 200:
                raise FeedError(f"{source}: unexpected HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _size_error(source, limit)
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise _size_error(source, limit)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("overall deadline", request=response.request)
                chunks.append(chunk)
            body = b"".join(chunks)
            cached.store(
                body,
                etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"),
                content_type=content_type,
            )
            return FetchedFeed(source, str(response.url), body, content_type)


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

    def store(
        self, body: bytes, *, etag: str | None, last_modified: str | None, content_type: str | None
    ) -> None:
        try:
            if not etag and not last_modified:
                self.forget()  # nothing to revalidate with: do not keep a stale copy
                return
            meta = {"source": self.source, "etag": etag or "", "last_modified": last_modified or "",
                    "content_type": content_type or ""}
            atomic_write(self.body_path, body)
            atomic_write(self.meta_path, json.dumps(meta, indent=1))
            self._meta = meta
        except OSError:
            # The cache only saves bandwidth; a read-only cache folder must not stop the week.
            pass
