"""The app as a whole: /healthz, the one error mapping, body limits, security headers,
request logs without tokens, and the secret key the factory insists on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from newsletter.config import Settings, load_settings
from newsletter.errors import ConfigError
from newsletter.store.subscribers import Subscriber
from newsletter.web.app import create_app

from .conftest import BASE_URL, SECRET, csrf_token


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_healthz_without_a_database_is_503_and_says_nothing_about_it(write_config, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "missing.db"
    settings = load_settings(write_config({"database": {"url": f"sqlite:///{missing}"}}), env={})
    with TestClient(create_app(settings, secret=SECRET), base_url=BASE_URL) as client:
        response = client.get("/healthz")
        page = client.get("/unsubscribe/" + "a" * 40)
    assert response.status_code == 503 and str(missing) not in response.text
    assert page.status_code == 503 and "temporarily unavailable" in page.text and "missing.db" not in page.text
    assert not missing.exists()


def test_unknown_pages_and_methods(client: TestClient) -> None:
    missing = client.get("/nothing/here")
    assert missing.status_code == 404 and "There is no page at this address." in missing.text
    assert missing.headers["content-type"].startswith("text/html")
    assert client.delete("/subscribe").status_code == 405
    assert client.get("/", follow_redirects=False).headers["location"] == "/subscribe"
    assert client.get("/static/style.css").status_code == 200


def test_security_headers(client: TestClient) -> None:
    headers = client.get("/subscribe").headers
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"


def test_a_chunked_body_over_the_limit_is_413(client: TestClient, subscriber: Subscriber) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"List-Unsubscribe=One-Click&padding="
        for _ in range(40):
            yield b"x" * 1000

    response = client.post(
        f"/unsubscribe/{subscriber.token}",
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert client.get(f"/unsubscribe/{subscriber.token}").text.count("<button") == 1  # still subscribed


def test_a_bad_content_length_is_400(client: TestClient, subscriber: Subscriber) -> None:
    response = client.post(
        f"/unsubscribe/{subscriber.token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "ten"},
    )
    assert response.status_code == 400


def test_request_logs_name_routes_not_tokens(
    client: TestClient, subscriber: Subscriber, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="newsletter.web")
    client.get(f"/unsubscribe/{subscriber.token}")
    client.post(f"/unsubscribe/{subscriber.token}", data={"List-Unsubscribe": "One-Click"})
    client.get(f"/confirm/{'q' * 43}?token=secret-query")
    client.get(f"/no/such/{'z' * 40}")
    client.post("/subscribe", data={"email": "a@example.net", "csrf_token": csrf_token(client)})
    lines = [r.getMessage() for r in caplog.records if r.name == "newsletter.web.access"]
    assert "event=request method=GET route=/unsubscribe/{token} status=200" in lines[0]
    assert "route=/unsubscribe/{token} status=200" in lines[1]
    assert "route=/confirm/{token} status=404" in lines[2]
    assert "route=/no/such/... status=404" in lines[3]
    logged = caplog.text
    for secret in (subscriber.token, "q" * 43, "secret-query", "z" * 40, SECRET, "a@example.net"):
        assert secret not in logged


def test_the_factory_needs_a_long_secret_key(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="NEWSLETTER_SECRET_KEY, which is not set"):
        create_app(settings)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "short")
    with pytest.raises(ConfigError, match="shorter than 32 characters"):
        create_app(settings)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k" * 32)
    assert create_app(settings).title.endswith("newsletter")


def test_the_openapi_description_lists_the_routes(client: TestClient, engine: Engine) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {
        "/unsubscribe/{token}",
        "/subscribe",
        "/confirm/{token}",
        "/archive",
        "/archive/{slug}",
        "/webhooks/sendgrid",
        "/healthz",
        "/preview",
        "/preview/{slug}",
    } <= paths
