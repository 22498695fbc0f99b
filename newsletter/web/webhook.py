"""The SendGrid Signed Event Webhook: verify the ECDSA signature over timestamp + raw
body and the timestamp's age (the replay window), check the body is a JSON array of
events, then hand the events to ``store.events``, which applies each one once.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.store import events
from newsletter.web.context import context
from newsletter.web.problems import BadRequest, NotConfigured
from newsletter.web.security import Forbidden

log = logging.getLogger("newsletter.web")
router = APIRouter()

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


def load_public_key(encoded: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key as shown in its settings: base64 of the DER key."""
    try:
        key = load_der_public_key(base64.b64decode(encoded.strip(), validate=True))
    except (binascii.Error, ValueError, UnsupportedAlgorithm):
        raise ConfigError("the SendGrid webhook public key is not a base64 DER public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError("the SendGrid webhook public key is not an ECDSA key")
    return key


@dataclass(frozen=True)
class SignedWebhook:
    """Checks a request's signature and timestamp against the key and window."""

    key: ec.EllipticCurvePublicKey
    max_age_seconds: int

    def verify(self, signature: str | None, timestamp: str | None, body: bytes, now: dt.datetime) -> None:
        if not signature or not timestamp:
            raise Forbidden("missing webhook signature")
        try:
            sent_at = int(timestamp.strip())
            raw_signature = base64.b64decode(signature.strip(), validate=True)
        except (ValueError, binascii.Error):
            raise Forbidden("malformed webhook signature") from None
        if abs(now.timestamp() - sent_at) > self.max_age_seconds:
            raise Forbidden("stale webhook timestamp")
        try:
            self.key.verify(raw_signature, timestamp.strip().encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise Forbidden("bad webhook signature") from None


def verifier(settings: Settings) -> SignedWebhook | None:
    """The verifier from the key in the environment, or None when none is set."""
    hook = settings.web.sendgrid_webhook
    try:
        encoded = settings.secret(hook.public_key_env, "the SendGrid webhook public key")
    except ConfigError:
        return None
    return SignedWebhook(load_public_key(encoded), hook.max_age_seconds)


def parse_body(body: bytes) -> list[dict[str, Any]]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the body is not JSON") from None
    if not isinstance(payload, list) or not all(isinstance(e, dict) for e in payload):
        raise BadRequest("the body must be a JSON array of event objects")
    return payload


EVENTS_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}},
    },
    "parameters": [
        {"name": SIGNATURE_HEADER, "in": "header", "required": True, "schema": {"type": "string"}},
        {"name": TIMESTAMP_HEADER, "in": "header", "required": True, "schema": {"type": "string"}},
    ],
}


@router.post("/webhooks/sendgrid", summary="SendGrid event webhook", openapi_extra=EVENTS_SCHEMA)
async def sendgrid_events(request: Request) -> JSONResponse:
    ctx = context(request)
    check: SignedWebhook | None = request.app.state.webhook
    if check is None:
        raise NotConfigured("the SendGrid webhook is not configured on this server")
    body = await request.body()
    check.verify(request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER), body, ctx.clock())
    payload = parse_body(body)
    bounces = ctx.settings.bounces
    applied = await run_in_threadpool(
        events.apply_events,
        ctx.engine,
        payload,
        now=ctx.clock(),
        soft_bounces=events.SoftBounces(bounces.soft_limit, bounces.soft_window_days),
        anonymous=ctx.settings.tracking.anonymous_events(),
    )
    log.info(
        "event=webhook received=%d recorded=%d duplicates=%d ignored=%d reconciled=%d changes=%s",
        applied.received,
        applied.recorded,
        applied.duplicates,
        applied.ignored,
        applied.reconciled,
        ",".join(f"{k}:{v}" for k, v in sorted(applied.status_changes.items())) or "-",
    )
    return JSONResponse(
        {
            "received": applied.received,
            "recorded": applied.recorded,
            "duplicates": applied.duplicates,
            "ignored": applied.ignored,
            "reconciled": applied.reconciled,
        }
    )
