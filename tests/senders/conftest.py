"""Fixtures for the sender backends: the example issue rendered once per test, recipients,
a real HTTP server on 127.0.0.1 standing in for api.sendgrid.com (replies and faults set
by the test), a real aiosmtpd server (rejections, dropped connections, AUTH, TLS), and a
self-signed certificate for STARTTLS and implicit TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from newsletter import issuefile, render
from newsletter.config import Settings
from newsletter.models import Recipient
from newsletter.senders.base import Batch, Delivery
from tests.conftest import EXAMPLE_ISSUE


@pytest.fixture
def rendered(settings: Settings) -> render.RenderedEmail:
    return render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings).email


def deliveries(n: int, start: int = 1, domain: str = "example.net") -> list[Delivery]:
    """``n`` recipients with keys ``start``..: reader<key>@domain, "Reader <key>"."""
    return [
        Delivery(key=k, recipient=Recipient(
            email=f"reader{k}@{domain}", name=f"Reader {k}",
            unsubscribe_url=f"https://news.example.org/unsubscribe/token-{k}"))
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


@dataclass
class Reply:
    status: int = 202
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang: bool = False  # answer only when the test ends (the client must time out)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class SendgridStub:
    """Records each request; answers with the queued ``replies``, then 202, after
    ``delay`` seconds (slow enough, for the crash tests, to kill a sender mid-send)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.requests: list[Received] = []
        self.replies: list[Reply] = []
        self.release = threading.Event()
        self.count = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if delay:
                    time.sleep(delay)
                with stub.lock:
                    stub.requests.append(Received("POST", self.path, dict(self.headers.items()),
                                                  json.loads(raw) if raw else None))
                    stub.count += 1
                    reply = stub.replies.pop(0) if stub.replies else Reply(
                        headers={"X-Message-Id": f"msg-{stub.count}"})
                if reply.hang:
                    stub.release.wait(10)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def received(self) -> list[str]:
        """Every address of every accepted request, in order."""
        with self.lock:
            return [to["email"] for r in self.requests for p in r.body["personalizations"] for to in p["to"]]

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
    """aiosmtpd handler: records messages; refuses, or drops the connection, on demand."""

    messages: list[Envelope] = field(default_factory=list)
    reject: dict[str, str] = field(default_factory=dict)  # address -> SMTP reply
    drop_at_mail: set[int] = field(default_factory=set)  # n-th MAIL command: hang up
    drop_at_data: set[int] = field(default_factory=set)  # n-th message: hang up, not kept
    mails: int = 0
    datas: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
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

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address in self.reject:
            return self.reject[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.datas += 1
            drop = self.datas in self.drop_at_data
        if drop:
            assert server.transport is not None
            server.transport.close()
            return "451 dropped"
        self.messages.append(envelope)
        return "250 OK"


class Credentials:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == self.user and auth_data.password == self.password)
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


@pytest.fixture
def smtp_server_factory() -> Iterator[Any]:
    """Start aiosmtpd on 127.0.0.1: ``factory(tls=None|"starttls"|"tls", auth=(user, pw),
    context=server SSLContext)``; stopped after the test."""
    started: list[SmtpServer] = []

    def start(*, tls: str | None = None, context: ssl.SSLContext | None = None,
              auth: tuple[str, str] | None = None) -> SmtpServer:
        handler = Handler()
        port = free_port()
        kwargs: dict[str, Any] = {}
        if tls == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        if auth:
            # aiosmtpd 1.4 counts only STARTTLS as TLS for auth_require_tls.
            kwargs.update(authenticator=Credentials(*auth), auth_require_tls=tls == "starttls")
        controller = Controller(handler, hostname="127.0.0.1", port=port,
                                ssl_context=context if tls == "tls" else None, **kwargs)
        controller.start()
        started.append(SmtpServer(handler, controller, port))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Certificate(cert_path, key_path)
