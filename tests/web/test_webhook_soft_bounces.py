"""The webhook counts SendGrid's soft bounces (type ``blocked``) against the configured
``bounces.soft_limit`` within ``bounces.soft_window_days``, like the DSN reader does."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from newsletter.store import subscribers

from .conftest import Clock, event_body, sign


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"bounces": {"soft_limit": 2, "soft_window_days": 7}}


def blocked(n: int, at: dt.datetime) -> dict[str, Any]:
    return {
        "sg_event_id": f"blocked-{n}",
        "event": "bounce",
        "type": "blocked",
        "email": "soft@example.net",
        "timestamp": int(at.timestamp()),
        "reason": "421 4.7.0 try again later",
    }


def test_soft_bounces_mark_an_address_at_the_configured_limit(
    client: TestClient, engine: Engine, webhook_key: ec.EllipticCurvePrivateKey, clock: Clock
) -> None:
    subscribers.add(engine, "soft@example.net", status="active")
    now = clock()

    def post(n: int, at: dt.datetime) -> None:
        body = event_body(blocked(n, at))
        response = client.post(
            "/webhooks/sendgrid", content=body, headers=sign(webhook_key, body, int(now.timestamp()))
        )
        assert response.status_code == 200

    # two outside the 7-day window and one inside: 1 of 2 (the defaults, 3 in 30 days,
    # would have marked it here)
    for n, days in enumerate((9, 8, 1), start=1):
        post(n, now - dt.timedelta(days=days))
    assert subscribers.get(engine, "soft@example.net").status == "active"
    post(4, now)
    assert subscribers.get(engine, "soft@example.net").status == "bounced"
