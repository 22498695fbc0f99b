"""Fixtures for the sender backends: the example issue rendered once per test, recipients,
a real HTTP server on 127.0.0.1 standing in for api.sendgrid.com (replies and faults set
by the test), a real aiosmtpd server (rejections, dropped connections, AUTH, TLS), and a
self-signed certificate for STARTTLS and implicit TLS."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from newsletter import issuefile, render
from newsletter.config import Settings
from newsletter.models import Recipient
from newsletter.senders.base import Batch, Delivery
from tests.conftest import EXAMPLE_ISSUE
from tests.helpers.tls import Certificate, self_signed


@pytest.fixture
def rendered(settings: Settings) -> render.RenderedEmail:
    return render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings).email


def deliveries(n: int, start: int = 1, domain: str = "example.net") -> list[Delivery]:
    """``n`` recipients with keys ``start``..: reader<key>@domain, "Reader <key>"."""
    return [
        Delivery(
            key=k,
            recipient=Recipient(
                email=f"reader{k}@{domain}",
                name=f"Reader {k}",
                unsubscribe_url=f"https://news.example.org/unsubscribe/token-{k}",
                preferences_url=f"https://news.example.org/preferences/token-{k}",
            ),
        )
        for k in range(start, start + n)
    ]


def make_batch(email: render.RenderedEmail, items: list[Delivery], batch_id: str = "b-1") -> Batch:
    return Batch(issue=email.slug, batch_id=batch_id, email=email, deliveries=items)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- a stand-in for api.sendgrid.com ------------------------------------------------------

# Faults a test can queue by name (``SendgridStub.queue``) or inject at random
# (``SendgridStub.inject``), from "may have arrived" to "proves nothing arrived":
FAULTS = (
    "late",  # accepted (its personalizations recorded as delivered), answered past the client's timeout
    "close",  # accepted, then the connection closed without an answer
    "drop",  # the connection closed before the body was read: nothing accepted
    "refuse_some",  # a 400 naming one personalization (SendGrid then takes none of the request)
    "throttle",  # 429 with Retry-After
    "unavailable",  # a 5xx
)


@dataclass
class Reply:
    """How the stand-in answers one ``POST /v3/mail/send``; a 2xx accepts the request
    (its personalizations are recorded as delivered) unless it drops or refuses."""

    status: int = 202
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang: bool = False  # answer only when the test ends (the client must time out)
    late: float = 0.0  # answer this many seconds later (or when the test ends)
    close: bool = False  # close the connection without an answer
    drop: bool = False  # close the connection before reading the body
    refuse: tuple[int, ...] = ()  # a 400 naming these personalizations (by index)
    refuse_any: bool = False  # a 400 naming one personalization, picked at random

    @property
    def accepts(self) -> bool:
        return 200 <= self.status < 300 and not (self.drop or self.refuse or self.refuse_any)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    accepted: bool = True  # False: answered with an error, refused, or dropped unread


@dataclass
class RandomFaults:
    """On ``rate`` of the requests, one of ``kinds`` at random (seeded)."""

    rate: float
    seed: int
    kinds: tuple[str, ...] = FAULTS

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.drawn: Counter[str] = Counter()

    def draw(self) -> str | None:
        kind = self.rng.choice(self.kinds) if self.rng.random() < self.rate else None
        if kind:
            self.drawn[kind] += 1
        return kind


def _errors(*errors: tuple[str | None, str]) -> bytes:
    return json.dumps({"errors": [{"field": f, "message": m} for f, m in errors]}).encode()


class SendgridStub:
    """A real HTTP server standing in for api.sendgrid.com. ``POST /v3/mail/send``
    answers with the queued ``replies`` (a ``Reply`` or a fault's name), else a random
    fault if ``inject`` set a rate, else ``default`` (202), after ``delay`` seconds (slow
    enough, for the crash tests, to kill a sender mid-send). An address it refused once
    it refuses in every later request, as SendGrid does. ``GET /v3/scopes`` answers
    ``scopes`` with ``scopes_status``.

    It records what it received (``requests``) and what it accepted: ``delivered``,
    each accepted personalization (its ``to`` and the ``custom_args`` that SendGrid's
    events carry back), and ``refused`` addresses.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.requests: list[Received] = []
        self.delivered: list[dict[str, Any]] = []
        self.refused: set[str] = set()
        self.replies: list[Reply | str] = []
        self.default = Reply()
        self.faults: RandomFaults | None = None
        self.late_seconds = 2.0  # for "late"
        self.retry_after = "1"  # for "throttle"
        self.scopes: list[str] = ["mail.send", "alerts.read"]
        self.scopes_status = 200
        self.checks = 0  # GET /v3/scopes requests
        self.release = threading.Event()
        self.count = 0  # POST requests, answered or not
        self.lock = threading.Lock()
        self.rng = random.Random(0)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with stub.lock:
                    stub.checks += 1
                    status, scopes = stub.scopes_status, list(stub.scopes)
                if self.path != "/v3/scopes":
                    self._answer(Reply(status=404, body=_errors((None, "not found"))))
                elif status != 200:
                    self._answer(Reply(status=status, body=_errors((None, "authorization required"))))
                else:
                    self._answer(Reply(status=200, body=json.dumps({"scopes": scopes}).encode()))

            def do_POST(self) -> None:
                with stub.lock:
                    stub.count += 1
                    planned, queued = stub._next()
                if planned is not None and planned.drop:
                    with stub.lock:
                        stub.requests.append(Received("POST", self.path, dict(self.headers.items()), None, False))
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                if len(raw) < length:  # the client went away mid-request: nothing arrived
                    self.close_connection = True
                    return
                if delay:
                    time.sleep(delay)
                body: Any = json.loads(raw) if raw else None
                with stub.lock:
                    reply = stub._decide(planned, queued, body)
                    stub.requests.append(Received("POST", self.path, dict(self.headers.items()), body, reply.accepts))
                    if reply.accepts:
                        stub.delivered.extend(body["personalizations"])
                if reply.hang or reply.late:
                    stub.release.wait(10 if reply.hang else reply.late)
                if reply.close:
                    self.close_connection = True
                    return
                self._answer(reply)

            def _answer(self, reply: Reply) -> None:
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:  # the client gave up waiting (a late answer)
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up mid-exchange is one of the faults under test

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def queue(self, *replies: Reply | str) -> None:
        """Answer the next requests with these (a ``Reply`` or a name from ``FAULTS``)."""
        with self.lock:
            self.replies.extend(replies)

    def inject(self, rate: float, seed: int, kinds: tuple[str, ...] = FAULTS) -> None:
        """From now on, a random fault of ``kinds`` on ``rate`` of the requests."""
        with self.lock:
            self.faults = RandomFaults(rate, seed, kinds)
            self.rng = random.Random(seed)

    def _next(self) -> tuple[Reply | None, bool]:
        """The planned answer to the next request, and whether it came from the queue."""
        if self.replies:
            item = self.replies.pop(0)
            return (self._fault(item) if isinstance(item, str) else item), True
        kind = self.faults.draw() if self.faults else None
        return (self._fault(kind) if kind else None), False

    def _decide(self, planned: Reply | None, queued: bool, body: Any) -> Reply:
        """The answer to a request that was read: the server's own refusals first (a
        queued answer then waits for the next request), else what was planned."""
        addresses = [[to["email"] for to in p["to"]] for p in body["personalizations"]]
        refused = tuple(i for i, p in enumerate(addresses) if self.refused.intersection(p))
        if refused:
            if planned is not None and queued:
                self.replies.insert(0, planned)
            return self._refusal(addresses, refused)
        if planned is None:
            return replace(self.default, headers={"X-Message-Id": f"msg-{self.count}", **self.default.headers})
        if planned.refuse_any:
            return self._refusal(addresses, (self.rng.randrange(len(addresses)),))
        if planned.refuse:
            return self._refusal(addresses, planned.refuse)
        return planned

    def _refusal(self, addresses: list[list[str]], indexes: tuple[int, ...]) -> Reply:
        for i in indexes:
            self.refused.update(addresses[i])
        return Reply(
            status=400,
            refuse=indexes,
            headers={"Content-Type": "application/json"},
            body=_errors(*[(f"personalizations.{i}.to.0.email", "Does not contain a valid address.") for i in indexes]),
        )

    def _fault(self, kind: str) -> Reply:
        if kind == "late":
            return Reply(late=self.late_seconds)
        if kind == "close":
            return Reply(close=True)
        if kind == "drop":
            return Reply(drop=True)
        if kind == "refuse_some":
            return Reply(refuse_any=True)
        if kind == "throttle":
            return Reply(
                status=429, headers={"Retry-After": self.retry_after}, body=_errors((None, "too many requests"))
            )
        if kind == "unavailable":
            return Reply(status=self.rng.choice((500, 502, 503)), body=b"upstream trouble")
        raise ValueError(f"unknown fault {kind!r}")

    @property
    def received(self) -> list[str]:
        """Every address of every accepted request, in order."""
        with self.lock:
            return [to["email"] for p in self.delivered for to in p["to"]]

    def events(self, event: str = "delivered", batches: set[str] | None = None) -> list[dict[str, Any]]:
        """What SendGrid's event webhook would post for the accepted personalizations
        (of ``batches``, or all): one ``event`` each, carrying its custom_args."""
        with self.lock:
            accepted = list(self.delivered)
        now = int(time.time())
        return [
            {
                "sg_event_id": f"{event}-{p['custom_args']['newsletter_delivery']}-{n}",
                "event": event,
                "email": p["to"][0]["email"],
                "timestamp": now,
                **p["custom_args"],
            }
            for n, p in enumerate(accepted)
            if batches is None or p["custom_args"]["newsletter_batch"] in batches
        ]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sendgrid_stub() -> Iterator[SendgridStub]:
    stub = SendgridStub()
    stub.thread.start()
    yield stub
    stub.close()


# --- a real SMTP server -------------------------------------------------------------------


@dataclass
class Handler:
    """aiosmtpd handler: records messages; refuses, or drops the connection, on demand:
    at a MAIL command, or after a message's content, with the message lost or kept (the
    server queued it, then the connection broke before its answer)."""

    messages: list[Envelope] = field(default_factory=list)
    reject: dict[str, str] = field(default_factory=dict)  # address -> SMTP reply
    drop_at_mail: set[int] = field(default_factory=set)  # n-th MAIL command: hang up
    drop_at_data: set[int] = field(default_factory=set)  # n-th message: hang up, not kept
    drop_after_queue: set[int] = field(default_factory=set)  # n-th message: kept, then hang up
    delay: float = 0.0  # seconds each message's content takes before it is kept and answered
    mails: int = 0
    datas: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        with self.lock:
            self.mails += 1
            drop = self.mails in self.drop_at_mail
        if drop:
            assert server.transport is not None
            server.transport.close()
            return "421 closing"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.reject:
            return self.reject[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            self.datas += 1
            lost = self.datas in self.drop_at_data
            if not lost:
                self.messages.append(envelope)
            drop = lost or self.datas in self.drop_after_queue
        if drop:
            assert server.transport is not None
            server.transport.close()
            return "451 dropped"
        return "250 OK"


class Credentials:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user
            and auth_data.password == self.password
        )
        return AuthResult(success=ok, handled=False)


@dataclass
class SmtpServer:
    handler: Handler
    controller: Controller
    port: int
    running: bool = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.controller.stop()


def start_smtp_server(
    *, tls: str | None = None, context: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None
) -> SmtpServer:
    """aiosmtpd on 127.0.0.1 (``tls``: None, "starttls" or "tls"); the caller stops it."""
    handler = Handler()
    port = free_port()
    kwargs: dict[str, Any] = {}
    if tls == "starttls":
        kwargs.update(tls_context=context, require_starttls=True)
    if auth:
        # aiosmtpd 1.4 counts only STARTTLS as TLS for auth_require_tls.
        kwargs.update(authenticator=Credentials(*auth), auth_require_tls=tls == "starttls")
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, ssl_context=context if tls == "tls" else None, **kwargs
    )
    controller.start()
    return SmtpServer(handler, controller, port)


def smtp_delivery(port: int) -> dict[str, Any]:
    """The config's ``delivery`` section for the local aiosmtpd server on ``port``: no
    TLS, no login, one connection."""
    return {
        "backend": "smtp",
        "smtp": {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "connections": 1,
            "username_env": None,
            "password_env": None,
        },
    }


@pytest.fixture
def smtp_server_factory() -> Iterator[Any]:
    """Start aiosmtpd on 127.0.0.1: ``factory(tls=None|"starttls"|"tls", auth=(user, pw),
    context=server SSLContext)``; stopped after the test."""
    started: list[SmtpServer] = []

    def start(**options: Any) -> SmtpServer:
        started.append(start_smtp_server(**options))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost."""
    return self_signed(tmp_path_factory.mktemp("tls"))
