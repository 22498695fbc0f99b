"""The web app's defences: signed double-submit CSRF tokens, the sign-up rate limiter (in
memory: one process, reset on restart), and the gate in front of the editors' preview
(a token or basic auth; open without them only in ``local`` mode, see ``EditorGate``).
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import ipaddress
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from newsletter.errors import NewsletterError

CSRF_COOKIE = "newsletter_csrf"
CSRF_FIELD = "csrf_token"
CSRF_MAX_AGE = 12 * 3600  # seconds a form may stay open before it must be reloaded
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class Unauthorized(NewsletterError):
    """The editors' preview needs a token or a password here."""

    status = 401


class Forbidden(NewsletterError):
    status = 403


def is_loopback(host: str) -> bool:
    """True when ``host`` (a bind address or a Host header's name) is this machine only."""
    host = host.strip().lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class CsrfSigner:
    """Double-submit tokens: a random cookie, and a form field that is an HMAC of that
    cookie and a time under the secret key. A cross-site form can make the browser send
    the cookie but cannot read it, and cannot forge the field without the key."""

    def __init__(self, secret_key: str, max_age: int = CSRF_MAX_AGE) -> None:
        self._key = hashlib.sha256(b"newsletter-csrf:" + secret_key.encode("utf-8")).digest()
        self.max_age = max_age

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(24)

    @staticmethod
    def usable_cookie(value: str | None) -> bool:
        return (
            bool(value) and 20 <= len(value or "") <= 64 and (value or "").replace("-", "").replace("_", "").isalnum()
        )

    def _mac(self, cookie: str, issued: int) -> str:
        digest = hmac.new(self._key, f"{cookie}|{issued}".encode("ascii", "replace"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def token(self, cookie: str, now: float) -> str:
        issued = int(now)
        return f"{issued}.{self._mac(cookie, issued)}"

    def valid(self, cookie: str | None, token: str | None, now: float) -> bool:
        if not cookie or not token or not self.usable_cookie(cookie) or len(token) > 200:
            return False
        issued_text, _, mac = token.partition(".")
        try:
            issued = int(issued_text)
        except ValueError:
            return False
        if not 0 <= now - issued <= self.max_age:
            return False
        return hmac.compare_digest(mac.encode("ascii", "replace"), self._mac(cookie, issued).encode("ascii"))


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (a client address).

    Kept in this process's memory: enough for one server process; behind several
    processes each allows ``limit``. The number of keys is bounded, oldest dropped first.
    """

    def __init__(self, limit: int, window: float = 3600.0, max_keys: int = 100_000) -> None:
        self.limit, self.window, self.max_keys = limit, window, max_keys
        self._hits: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def hit(self, key: str, now: float) -> float | None:
        """Count one event for ``key``; None when allowed, else seconds until it would be."""
        with self._lock:
            hits = self._hits.pop(key, None) or collections.deque()
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            self._hits[key] = hits
            if len(hits) >= self.limit:
                return max(1.0, hits[0] + self.window - now)
            hits.append(now)
            while len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
            return None


# Headers a proxy adds (nginx, Caddy, Apache, HAProxy, CDNs): a request carrying any of
# them did not come straight from a browser on this machine.
FORWARDING_HEADERS = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-server",
        "x-real-ip",
        "via",
        "true-client-ip",
        "cf-connecting-ip",
        "x-client-ip",
    }
)


def is_forwarded(header_names: Iterable[str]) -> bool:
    return any(name.lower() in FORWARDING_HEADERS for name in header_names)


@dataclass(frozen=True)
class EditorRequest:
    """What the gate looks at: the Host header, the Authorization header, the address
    the connection came from (before any proxy header is applied) and whether the
    request carries forwarding headers."""

    host: str
    authorization: str | None
    peer: str
    forwarded: bool


@dataclass(frozen=True)
class EditorGate:
    """Who may use the preview: whoever presents a bearer token, or basic auth with the
    configured username and password (or any username and the token as password).

    Access is decided by those credentials, never by the Host header or the address
    alone: a proxy on this machine makes every request look local. Only ``open_locally``
    (``web.preview.access: local`` on a server bound to loopback, with no trusted proxy)
    also lets in a request without credentials, and only one that comes from a loopback
    address, names a loopback host (a DNS-rebinding page names its own) and carries no
    forwarding header. A proxy that adds none (nginx's bare ``proxy_pass``) cannot be
    told from a local browser: that is why ``local`` is not the default."""

    open_locally: bool = False
    token: str | None = None
    username: str | None = None
    password: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.token or (self.username and self.password))

    def check(self, request: EditorRequest) -> None:
        if request.authorization and self.configured and self._accepts(request.authorization):
            return
        if self.open_locally and self._local(request):
            return
        if not self.configured:
            raise Forbidden(
                "the preview is disabled here: it needs the preview token or the editors' password, "
                "and neither is set in the server's environment"
            )
        raise Unauthorized("the preview needs the preview token or the editors' password")

    @staticmethod
    def _local(request: EditorRequest) -> bool:
        name = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
        return not request.forwarded and is_loopback(request.peer) and is_loopback(name)

    def _accepts(self, authorization: str) -> bool:
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return bool(self.token) and _same(value, self.token or "")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        # both comparisons always run: the time taken does not tell which one failed
        by_token = bool(self.token) and _same(password, self.token or "")
        by_password = (
            bool(self.username and self.password)
            & _same(user, self.username or "")
            & _same(password, self.password or "")
        )
        return by_token or by_password


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
