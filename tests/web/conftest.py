"""Fixtures for the web app: a migrated database per test on SQLite and on PostgreSQL
(``database_url`` and ``engine`` from tests/dbfixtures.py), settings pointing at it, a
test clock, the in-memory sender, a real ECDSA key pair for the SendGrid webhook, and
the app built by ``create_app``, driven in-process with FastAPI's TestClient."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from sqlalchemy import Engine

from newsletter.config import Settings, load_settings
from newsletter.senders.memory import MemorySender
from newsletter.store import subscribers
from newsletter.web.app import create_app
from tests.conftest import _deep_merge
from tests.dbfixtures import *  # noqa: F403 - database_url and engine, on SQLite and PostgreSQL

with warnings.catch_warnings():
    # Starlette 1.x asks for the httpx2 package; the httpx it still supports is installed.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

SECRET = "test-secret-key-" + "k" * 32
BASE_URL = "http://127.0.0.1:8000"  # the config's publication.public_url
START = dt.datetime(2024, 10, 28, 9, 0, tzinfo=dt.UTC)
WEBHOOK_KEY_ENV = "TEST_SENDGRID_WEBHOOK_KEY"


class Clock:
    """The app's clock in tests: stands still until a test moves it."""

    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Per-module changes to the config (override this fixture in a test module)."""
    return {}


@pytest.fixture
def webhook_key(monkeypatch: pytest.MonkeyPatch) -> ec.EllipticCurvePrivateKey:
    """A P-256 key pair like SendGrid's; the public half (base64 DER) in the environment."""
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    monkeypatch.setenv(WEBHOOK_KEY_ENV, base64.b64encode(der).decode("ascii"))
    return private


@pytest.fixture
def web_settings(
    write_config: Callable[..., Path], database_url: str, project: Path, config_overrides: dict[str, Any]
) -> Settings:
    base: dict[str, Any] = {
        "database": {"url": database_url},
        "web": {"sendgrid_webhook": {"public_key_env": WEBHOOK_KEY_ENV}},
    }
    return load_settings(write_config(_deep_merge(base, config_overrides)), env={})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sender() -> MemorySender:
    return MemorySender()


@pytest.fixture
def app(
    web_settings: Settings, engine: Engine, sender: MemorySender, clock: Clock, webhook_key: ec.EllipticCurvePrivateKey
) -> FastAPI:
    return create_app(web_settings, engine=engine, sender=sender, clock=clock, secret=SECRET)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url=BASE_URL) as test_client:
        yield test_client


EDITOR_TOKEN = "preview-token-" + "e" * 24


@pytest.fixture
def preview_token(monkeypatch: pytest.MonkeyPatch) -> str:
    """The editors' token in the environment; request it before ``app`` (who may see the
    preview is tested in test_editor_access.py)."""
    monkeypatch.setenv("NEWSLETTER_PREVIEW_TOKEN", EDITOR_TOKEN)
    return EDITOR_TOKEN


@pytest.fixture
def editor_client(preview_token: str, app: FastAPI) -> Iterator[TestClient]:
    """An editor's client: every request carries the token."""
    with TestClient(app, base_url=BASE_URL, headers={"Authorization": f"Bearer {preview_token}"}) as editor:
        yield editor


@pytest.fixture
def subscriber(engine: Engine) -> subscribers.Subscriber:
    return subscribers.add(engine, "reader@example.net", name="Ann Reader", status="active")


def csrf_token(client: TestClient, url: str = "/subscribe") -> str:
    """GET the form page (which sets the CSRF cookie) and read its hidden token."""
    response = client.get(url)
    assert response.status_code == 200, response.text
    found = re.search(r'name="csrf_token" value="([^"]+)"', response.text)
    assert found, "no CSRF token in the form"
    return found.group(1)


def sign(private: ec.EllipticCurvePrivateKey, body: bytes, timestamp: int) -> dict[str, str]:
    """The headers SendGrid sends: an ECDSA-SHA256 signature of timestamp + body."""
    signature = private.sign(str(timestamp).encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode("ascii"),
        "X-Twilio-Email-Event-Webhook-Timestamp": str(timestamp),
        "Content-Type": "application/json",
    }


def event_body(*events: dict[str, Any]) -> bytes:
    return json.dumps(list(events)).encode("utf-8")
