"""Who may use the editors' preview (#13): credentials decide, never the Host header or
the peer address. In-process for every combination, then through a real ``newsletter
serve`` and a real reverse proxy that rewrites Host and adds X-Forwarded-For as nginx
is usually configured (and one that adds nothing, as nginx's bare ``proxy_pass``)."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from newsletter import issuefile
from newsletter.config import Settings, load_settings
from newsletter.errors import ConfigError
from newsletter.senders.memory import MemorySender
from newsletter.store import subscribers
from newsletter.web.app import create_app
from newsletter.web.security import FORWARDING_HEADERS
from tests.conftest import _deep_merge
from tests.helpers.proxy import reverse_proxy
from tests.helpers.serve import clean_env, cli, serving

from .conftest import SECRET, Clock

SLUG = "2024-10-25"
TOKEN = "preview-token-" + "t" * 24
PASSWORD = "editors-pass-" + "p" * 12
LOOPBACK = ("127.0.0.1", 50000)
ELSEWHERE = ("203.0.113.9", 50000)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def make_client(
    web_settings: Settings, engine: Engine, clock: Clock, sender: MemorySender, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., TestClient]]:
    """A client for an app built with ``web`` changes, credentials in the environment or
    not, connecting from ``peer``."""
    clients: list[TestClient] = []

    def make(
        web: dict[str, Any] | None = None,
        *,
        token: bool = True,
        password: bool = False,
        peer: tuple[str, int] = LOOPBACK,
        base_url: str = "http://127.0.0.1:8000",
    ) -> TestClient:
        monkeypatch.delenv("NEWSLETTER_PREVIEW_TOKEN", raising=False)
        monkeypatch.delenv("EDITORS_PASSWORD", raising=False)
        if token:
            monkeypatch.setenv("NEWSLETTER_PREVIEW_TOKEN", TOKEN)
        if password:
            monkeypatch.setenv("EDITORS_PASSWORD", PASSWORD)
        data = _deep_merge(web_settings.web.model_dump(), web or {})
        settings = web_settings.model_copy(update={"web": type(web_settings.web).model_validate(data)})
        app: FastAPI = create_app(settings, engine=engine, sender=sender, clock=clock, secret=SECRET)
        client = TestClient(app, base_url=base_url, client=peer)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def approve_form(client: TestClient, headers: dict[str, str]) -> dict[str, str]:
    """A valid CSRF token for approve, read from the page with credentials."""
    page = client.get(f"/preview/{SLUG}", headers=headers)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found
    return {"csrf_token": found.group(1)}


def test_the_shipped_config_requires_credentials_always(project: Path) -> None:
    settings = load_settings(project / "config.yaml", env={})
    assert settings.web.preview.access == "credentials" and settings.web.trusted_proxies == []
    assert settings.web.host == "127.0.0.1"


def test_by_default_even_a_local_request_needs_credentials(
    make_client: Callable[..., TestClient], web_settings: Settings
) -> None:
    client = make_client()
    for headers in ({}, {"Host": "localhost:8000"}, {"X-Forwarded-For": "203.0.113.9"}):
        refused = client.get("/preview", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["www-authenticate"].startswith("Basic ") and TOKEN not in refused.text
    # approve is refused before its CSRF check even runs, with a valid token and all
    form = approve_form(client, BEARER)
    assert client.post(f"/preview/{SLUG}/approve", data=form, follow_redirects=False).status_code == 401
    assert client.post(f"/preview/{SLUG}/send-test", data=form, follow_redirects=False).status_code == 401
    # the long poll too: it tells when an issue file changes, and holds a connection
    assert client.get(f"/preview/{SLUG}/changes", params={"since": "x", "wait": "5"}).status_code == 401
    assert issuefile.load(issuefile.path_for(web_settings.issues_dir, SLUG)).status == "draft"
    done = client.post(f"/preview/{SLUG}/approve", data=form, headers=BEARER, follow_redirects=False)
    assert done.status_code == 303
    assert issuefile.load(issuefile.path_for(web_settings.issues_dir, SLUG)).status == "approved"


def test_the_token_and_the_password_and_nothing_else(make_client: Callable[..., TestClient]) -> None:
    client = make_client(
        {"preview": {"username": "editor", "password_env": "EDITORS_PASSWORD"}},
        password=True,
        peer=ELSEWHERE,
        base_url="https://newsletter.example.org",
    )
    for headers in (
        {"Authorization": "Bearer wrong"},
        basic("editor", "wrong"),
        basic("other", PASSWORD),
        basic("editor", TOKEN[:-1]),
        {"Authorization": "Basic !!!"},
        {"Authorization": "Digest x"},
        {"Authorization": f"Bearer {TOKEN} "[:-2]},
        {"Authorization": f"Token {TOKEN}"},
    ):
        assert client.get("/preview", headers=headers).status_code == 401, headers
    for headers in (BEARER, basic("editor", PASSWORD), basic("anyone", TOKEN)):
        assert client.get("/preview", headers=headers).status_code == 200, headers
    assert client.get("/subscribe").status_code == 200  # the public pages stay public


def test_without_credentials_in_the_environment_the_preview_is_off(make_client: Callable[..., TestClient]) -> None:
    client = make_client(token=False)
    response = client.get("/preview", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 403 and "disabled" in response.text
    assert client.get("/preview", headers=basic("", "")).status_code == 403


def test_local_mode_opens_only_direct_loopback_requests(make_client: Callable[..., TestClient]) -> None:
    local = {"preview": {"access": "local"}}
    client = make_client(local)
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000"):
        assert client.get("/preview", headers={"Host": host}).status_code == 200, host
    # a DNS-rebinding page names its own host
    assert client.get("/preview", headers={"Host": "evil.example:8000"}).status_code == 401
    for name in sorted(FORWARDING_HEADERS):  # anything a proxy adds means "not from this machine"
        assert client.get("/preview", headers={name: "203.0.113.9"}).status_code == 401, name
        assert client.get("/preview", headers={name: "203.0.113.9", **BEARER}).status_code == 200, name
    assert make_client(local, peer=ELSEWHERE).get("/preview").status_code == 401
    # bound beyond loopback, local mode opens nothing
    assert make_client({**local, "host": "0.0.0.0"}).get("/preview").status_code == 401
    # with no credentials set, what local mode does not open is off
    bare = make_client(local, token=False)
    assert bare.get("/preview").status_code == 200
    assert bare.get("/preview", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403


@pytest.mark.parametrize(
    ("web", "message"),
    [
        ({"preview": {"access": "local"}, "trusted_proxies": ["127.0.0.1"]}, "access local is for a server no proxy"),
        ({"trusted_proxies": ["*"]}, "'*' is not an IP address or network"),
        ({"trusted_proxies": ["nginx"]}, "'nginx' is not an IP address or network"),
        ({"preview": {"access": "open"}}, "web.preview.access"),
        ({"confirmation_window_minutes": 3 * 24 * 60 + 1}, "web.confirmation_window_minutes"),
    ],
)
def test_bad_web_settings_are_refused(write_config: Callable[..., Path], web: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(write_config({"web": web}), env={})
    assert message in str(raised.value) and "config.yaml" in str(raised.value)


def sign_up(client: TestClient, address: str, forwarded_for: str | None) -> int:
    page = client.get("/subscribe")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return client.post("/subscribe", data={"email": address, "csrf_token": token.group(1)}, headers=headers).status_code


def test_only_a_trusted_proxy_names_the_client(make_client: Callable[..., TestClient], engine: Engine) -> None:
    proxied = make_client({"trusted_proxies": ["127.0.0.0/8"], "subscribe_rate_per_hour": 1})
    assert sign_up(proxied, "one@example.org", "198.51.100.1") == 200
    assert sign_up(proxied, "two@example.org", "198.51.100.2") == 200  # another reader behind the proxy
    assert sign_up(proxied, "three@example.org", "198.51.100.1") == 429
    found = subscribers.get(engine, "one@example.org")
    assert found is not None and found.consent is not None and found.consent.ip == "198.51.100.1"
    # from an address that is not a trusted proxy, X-Forwarded-For is the client's own claim
    direct = make_client({"trusted_proxies": ["127.0.0.0/8"], "subscribe_rate_per_hour": 1}, peer=ELSEWHERE)
    assert sign_up(direct, "four@example.org", "198.51.100.4") == 200
    assert sign_up(direct, "five@example.org", "198.51.100.5") == 429
    found = subscribers.get(engine, "four@example.org")
    assert found is not None and found.consent is not None and found.consent.ip == ELSEWHERE[0]
    # and with no trusted proxy, nobody's claim is believed
    plain = make_client({"subscribe_rate_per_hour": 1})
    assert sign_up(plain, "six@example.org", "198.51.100.6") == 200
    assert sign_up(plain, "seven@example.org", "198.51.100.7") == 429


# --- a real server behind a real proxy ----------------------------------------------


@pytest.fixture
def served_project(write_config: Callable[..., Path], project: Path) -> Callable[..., Path]:
    def configure(web: dict[str, Any]) -> Path:
        config = write_config(
            {
                "database": {"url": "sqlite:///newsletter.db"},
                "web": web,
                "delivery": {"backend": "outbox", "outbox": {"dir": "outbox"}},
            }
        )
        cli(config, clean_env(), "db", "upgrade")
        return config

    return configure


def test_through_a_proxy_the_preview_and_approve_need_credentials(
    served_project: Callable[..., Path], project: Path, tmp_path: Path
) -> None:
    """The report's reproduction: a proxy on this machine, curl with X-Forwarded-For."""
    config = served_project({"trusted_proxies": ["127.0.0.1"]})  # as the shipped config + deploy/ say
    env = clean_env({"NEWSLETTER_SECRET_KEY": SECRET, "NEWSLETTER_PREVIEW_TOKEN": TOKEN})
    issue = project / "issues" / f"{SLUG}.yaml"
    before = issue.read_bytes()
    with serving(config, env, tmp_path / "serve.log") as served:
        with reverse_proxy("127.0.0.1", served.port) as proxy:
            for url in (served.url, proxy.url):
                assert httpx.get(f"{url}/preview", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 401
                assert httpx.get(f"{url}/preview").status_code == 401
                page = httpx.get(f"{url}/preview/{SLUG}", headers=BEARER)
                assert page.status_code == 200
                token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
                assert token
                approve = httpx.post(
                    f"{url}/preview/{SLUG}/approve", data={"csrf_token": token.group(1)}, cookies=page.cookies
                )
                assert approve.status_code == 401
                assert issue.read_bytes() == before
            assert httpx.get(f"{proxy.url}/preview", auth=("editor", TOKEN)).status_code == 200
            assert httpx.get(f"{proxy.url}/subscribe").status_code == 200
        log = served.log_text()
    assert TOKEN not in log and SECRET not in log


def test_local_mode_behind_a_proxy_opens_nothing(served_project: Callable[..., Path], tmp_path: Path) -> None:
    config = served_project({"preview": {"access": "local"}})
    env = clean_env({"NEWSLETTER_SECRET_KEY": SECRET})
    with serving(config, env, tmp_path / "serve.log") as served:
        assert httpx.get(f"{served.url}/preview").status_code == 200  # the editor's laptop
        assert httpx.get(f"{served.url}/preview", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
        with reverse_proxy("127.0.0.1", served.port) as proxy:
            assert httpx.get(f"{proxy.url}/preview").status_code == 403
        # a proxy that adds no header at all cannot be told from a browser: why local is not the default
        with reverse_proxy("127.0.0.1", served.port, forwarded=False) as bare:
            assert httpx.get(f"{bare.url}/preview").status_code == 200
    assert "is open to this machine only" in served.log_text()
