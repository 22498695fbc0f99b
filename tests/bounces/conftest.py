"""Fixtures of the bounce suite: a real dovecot IMAP server (tests/helpers/dovecot.py),
a mailbox login per test, the database on SQLite and PostgreSQL, and an issue really
sent over SMTP (aiosmtpd) with VERP envelope senders, whose messages the DSNs return."""

from __future__ import annotations

import imaplib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from newsletter import send
from newsletter.config import Settings, load_settings
from tests.dbfixtures import *  # noqa: F403 - database_url and engine, on SQLite and PostgreSQL
from tests.helpers import dovecot
from tests.helpers.tls import Certificate, self_signed
from tests.send.conftest import add_subscribers, issue_path  # noqa: F401 - issue_path: a fixture
from tests.senders.conftest import smtp_delivery, start_smtp_server

SECRET = "bounce-test-signing-key"
RETURN_PATH = "bounces@news.example.org"


@pytest.fixture(scope="session")
def imap_certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return self_signed(tmp_path_factory.mktemp("imap-tls"))


@pytest.fixture(scope="session")
def imap_server(tmp_path_factory: pytest.TempPathFactory, imap_certificate: Certificate) -> Iterator[dovecot.Dovecot]:
    """dovecot on 127.0.0.1 for this test worker; skips without it (fails under CI)."""
    reason = dovecot.missing_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (required when CI is set)")
        pytest.skip(reason)
    server = dovecot.start(imap_certificate)
    yield server
    server.stop()


@dataclass
class Mailbox:
    """A fresh login on the IMAP server, and a client to put messages in and look."""

    server: dovecot.Dovecot
    user: str
    password: str

    def client(self) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.server.port, timeout=10)
        try:
            imap.login(self.user, self.password)
        except imaplib.IMAP4.error:
            imap.shutdown()
            raise
        return imap

    def append(self, *messages: bytes, folder: str = "INBOX") -> None:
        imap = self.client()
        try:
            for raw in messages:
                status, data = imap.append(folder, None, None, raw)
                assert status == "OK", data
        finally:
            imap.logout()

    def flags(self, folder: str = "INBOX") -> list[str]:
        """The flags of each message in ``folder``, in order."""
        imap = self.client()
        try:
            status, _ = imap.select(folder)
            assert status == "OK"
            _, data = imap.fetch("1:*", "(FLAGS)")
            return [d.decode() for d in data if isinstance(d, bytes)]
        finally:
            imap.logout()

    def count(self, folder: str = "INBOX") -> int:
        imap = self.client()
        try:
            status, data = imap.select(folder, readonly=True)
            return int(data[0]) if status == "OK" and data[0] else -1
        finally:
            imap.logout()

    def imap_config(self, **extra: Any) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.server.port,
            "security": "none",
            "username_env": "TEST_IMAP_USER",
            "password_env": "TEST_IMAP_PASSWORD",
            **extra,
        }

    def env(self) -> dict[str, str]:
        return {"TEST_IMAP_USER": self.user, "TEST_IMAP_PASSWORD": self.password, "NEWSLETTER_SECRET_KEY": SECRET}


@pytest.fixture
def mailbox(imap_server: dovecot.Dovecot) -> Mailbox:
    user, password = imap_server.add_user()
    return Mailbox(imap_server, user, password)


@dataclass
class Sent:
    """An issue sent over SMTP: what the server received, by recipient address."""

    settings: Settings
    config: Path
    engine: Engine
    envelopes: dict[str, str]  # recipient -> MAIL FROM
    messages: dict[str, bytes]  # recipient -> the message as received


@pytest.fixture
def sent(
    write_config: Callable[..., Path],
    database_url: str,
    engine: Engine,
    issue_path: Path,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Sent]]:
    """``sent(n, bounces={...})``: ``n`` subscribers, the issue sent to them through
    aiosmtpd with ``bounces.return_path`` set, and the config with ``bounces`` extra."""
    servers = []

    def run(n: int = 3, bounces: dict[str, Any] | None = None) -> Sent:
        emails = add_subscribers(engine, n)
        server = start_smtp_server()
        servers.append(server)
        config = write_config(
            {
                "database": {"url": database_url},
                "delivery": smtp_delivery(server.port),
                "bounces": {"return_path": RETURN_PATH, **(bounces or {})},
            }
        )
        monkeypatch.setenv("NEWSLETTER_SECRET_KEY", SECRET)
        settings = load_settings(config, env={})
        summary = send.send_issue(settings, issue_path, engine=engine)
        assert summary.sent == n, summary
        envelopes = {rcpt: m.mail_from for m in server.handler.messages for rcpt in m.rcpt_tos}
        messages = {rcpt: bytes(m.original_content) for m in server.handler.messages for rcpt in m.rcpt_tos}
        assert sorted(envelopes) == sorted(emails)
        return Sent(settings, config, engine, envelopes, messages)

    yield run
    for server in servers:
        server.stop()
