"""The SendGrid backend: one ``POST /v3/mail/send`` per batch of up to 1000
personalizations, the placeholders filled by SendGrid's ``substitutions``, and the
outcome mapped onto the delivery errors by what it proves: a failure while connecting
or sending (nothing arrived) or an HTTP error status -> DeliveryError (retry) or
PermanentDeliveryError; anything after the request left without a status (a timeout,
a reset, a broken answer) -> AmbiguousDeliveryError. Recipients the API cannot take are
rejected one by one, never the whole batch.

The API key is read from the environment variable named in config and goes nowhere but
the Authorization header: not into messages, not into logs.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import re
import time
import urllib.error
from dataclasses import replace
from typing import Any

import orjson
import python_http_client.exceptions
from sendgrid import SendGridAPIClient

from newsletter import render
from newsletter.config import SendgridBackend, Settings, Tracking
from newsletter.errors import AmbiguousDeliveryError, DeliveryError, HeaderError, PermanentDeliveryError
from newsletter.senders.base import Batch, BatchResult, SenderBase
from newsletter.senders.mime import envelope_address

MAX_PERSONALIZATIONS = 1000  # SendGrid's limit per request (and 1000 recipients)
MAX_CATEGORIES = 10
# custom_args keys in every personalization, so webhook events can be matched.
ISSUE_ARG = "newsletter_issue"
BATCH_ARG = "newsletter_batch"
DELIVERY_ARG = "newsletter_delivery"

_PERMANENT = {400, 401, 403, 404, 405, 413, 415}
_UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"
# Headers SendGrid sets itself and refuses in ``headers``.
_RESERVED = {
    "x-sg-id",
    "x-sg-eid",
    "received",
    "dkim-signature",
    "content-type",
    "content-transfer-encoding",
    "to",
    "from",
    "subject",
    "reply-to",
    "cc",
    "bcc",
}


def _keep_key_out_of_logs() -> None:
    # python_http_client logs every request's headers, Authorization included, at DEBUG.
    logging.getLogger("python_http_client.client").setLevel(logging.INFO)


_JSON = {"Content-Type": "application/json; charset=utf-8"}


class SendgridSender(SenderBase):
    """Delivers batches through SendGrid's v3 mail send API (or a local stand-in)."""

    name = "sendgrid"

    def __init__(
        self, api_key: str, config: SendgridBackend = SendgridBackend(), tracking: Tracking | None = None
    ) -> None:
        _keep_key_out_of_logs()
        self._api_key = api_key
        self.host = config.host.rstrip("/")
        self.timeout = config.timeout_seconds
        self.sandbox = config.sandbox
        self.categories = list(config.categories)
        self.max_batch_size = min(config.batch_size, MAX_PERSONALIZATIONS)
        # SendGrid's own tracking as config's tracking says (README, "Tracking"); the
        # text part's links stay as written
        tracking = tracking or Tracking()
        self.tracking_settings = {
            "click_tracking": {"enable": tracking.clicks != "off", "enable_text": False},
            "open_tracking": {"enable": tracking.opens != "off"},
        }
        self._client = SendGridAPIClient(api_key, host=self.host)
        self._client.client.timeout = self.timeout  # the library has none by default

    @classmethod
    def from_settings(cls, settings: Settings) -> SendgridSender:
        config = settings.delivery.sendgrid
        return cls(settings.secret(config.api_key_env, "the SendGrid API key"), config, settings.tracking)

    def __repr__(self) -> str:
        return f"SendgridSender(host={self.host!r})"  # never the key

    def payload(self, batch: Batch, refused: dict[int, str] | None = None) -> dict[str, Any]:
        """The request body for ``batch``: plain dicts, built fast for 1000 recipients;
        recipients in ``refused`` (default: ``self.refused(batch)``) are left out."""
        if len(batch.deliveries) > MAX_PERSONALIZATIONS:
            raise PermanentDeliveryError(
                f"sendgrid: a batch of {len(batch.deliveries)} recipients is over the "
                f"{MAX_PERSONALIZATIONS} SendGrid accepts in one request"
            )
        mail = batch.email
        if any(c in mail.subject + mail.from_name for c in "\r\n"):
            raise PermanentDeliveryError("sendgrid: the subject or sender name contains a line break")
        substitutions, list_unsubscribe = render.substitutions, render.list_unsubscribe
        if refused is None:
            refused = self.refused(batch)
        issue, batch_id = batch.issue, batch.batch_id
        personalizations = [
            {
                "to": [
                    {"email": r.email if r.email.isascii() else api_address(r.email), "name": display_name(r.name)}
                    if r.name
                    else {"email": r.email if r.email.isascii() else api_address(r.email)}
                ],
                "substitutions": substitutions(mail, r),
                "headers": {
                    "List-Unsubscribe": list_unsubscribe(mail, r),
                    "List-Unsubscribe-Post": _UNSUBSCRIBE_POST,
                },
                # The delivery id comes back in every event: reconciliation settles
                # exactly that ledger row.
                "custom_args": {ISSUE_ARG: issue, BATCH_ARG: batch_id, DELIVERY_ARG: str(key)},
            }
            for key, r in ((d.key, d.recipient) for d in batch.deliveries if d.key not in refused)
        ]
        sender: dict[str, str] = {"email": mail.from_address}
        if mail.from_name:
            # As it is, not display_name(): SendGrid's limit on "," and ";" is documented
            # for the personalizations' names only, its from.name takes them, and quotes
            # added here have been reported to show up literally in the From name
            # (sendgrid-nodejs#1183, sendgrid-php#897). reply_to carries no name.
            sender["name"] = mail.from_name
        body: dict[str, Any] = {
            "personalizations": personalizations,
            "from": sender,
            "subject": mail.subject,
            "content": [
                {"type": "text/plain", "value": mail.text},
                {"type": "text/html", "value": mail.html},
            ],
        }
        if mail.reply_to:
            body["reply_to"] = {"email": mail.reply_to}
        headers = {k: v for k, v in mail.headers.items() if k.lower() not in _RESERVED}
        if mail.list_id:
            headers["List-Id"] = mail.list_id
        if headers:
            body["headers"] = headers
        if self.categories:
            body["categories"] = self.categories
        body["tracking_settings"] = self.tracking_settings
        if self.sandbox:
            body["mail_settings"] = {"sandbox_mode": {"enable": True}}
        return body

    @staticmethod
    def refused(batch: Batch) -> dict[int, str]:
        """Recipients the API cannot take, left out of the request and rejected with the
        reason: values that would inject a header, and addresses its schema refuses."""
        refused: dict[int, str] = {}
        for d in batch.deliveries:
            r = d.recipient
            text = r.email + r.name + r.unsubscribe_url + r.preferences_url
            if "\n" in text or "\r" in text:
                refused[d.key] = f"a line break in the address, name or personal links of {r.email!r}"
                continue
            if not r.email.isascii() and (problem := address_problem(r.email)):
                refused[d.key] = f"sendgrid cannot send to {r.email!r}: {problem}"
        return refused

    def check(self) -> None:
        """A cheap authenticated request (``GET /v3/scopes``): the host answers, the API key
        is accepted and may send mail. Nothing is sent."""
        try:
            response = self._client.client.scopes.get(timeout=self.timeout)
        except python_http_client.exceptions.HTTPError as exc:
            if exc.status_code in (401, 403):
                raise self._http_error(exc.status_code, exc.body, exc.headers, permanent=True) from None
            return  # the host answers; mail send will say more
        except urllib.error.URLError as exc:
            raise DeliveryError(self._redact(f"sendgrid: cannot reach {self.host}: {exc.reason}")) from None
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryError(f"sendgrid: no answer from {self.host}: {type(exc).__name__}") from None
        try:
            scopes = json.loads(response.body or b"{}").get("scopes")
        except (ValueError, AttributeError):
            return
        if isinstance(scopes, list) and "mail.send" not in scopes:
            raise PermanentDeliveryError(
                f"sendgrid: the API key may not send mail (it lacks the mail.send scope on {self.host})"
            )

    def send(self, batch: Batch) -> BatchResult:
        rejected = self.refused(batch)
        remaining = [d for d in batch.deliveries if d.key not in rejected]
        # A 400 that names personalizations refuses the request, so nothing was sent:
        # those recipients are rejected and the rest go again at once.
        for _round in range(_REFUSAL_ROUNDS):
            if not remaining:
                return BatchResult(rejected=rejected)
            try:
                message_id = self._post(replace(batch, deliveries=remaining))
            except _Refused as refusal:
                for index, reason in refusal.reasons.items():
                    rejected[remaining[index].key] = reason
                remaining = [d for i, d in enumerate(remaining) if i not in refusal.reasons]
                continue
            except AmbiguousDeliveryError as exc:
                if not rejected:
                    raise
                # Those refused were not in this request: only its recipients may have arrived.
                return BatchResult(rejected=rejected, ambiguous={d.key: str(exc) for d in remaining})
            return BatchResult(sent=[d.key for d in remaining], rejected=rejected, message_id=message_id)
        raise PermanentDeliveryError(f"sendgrid: {self.host} kept refusing recipients of batch {batch.batch_id}")

    def _post(self, batch: Batch) -> str | None:
        """One ``POST /v3/mail/send``; the provider's message id. What an exception means:
        URLError is raised while connecting or sending (the request never arrived
        whole: retry); an HTTP status is an answer (retry or not by its code); anything
        after the request left (a timeout waiting for the answer, a reset, a broken
        answer) may follow an accepted request: ambiguous."""
        # Serialized here, compactly and without escaping non-ASCII, by orjson (four times
        # faster than json.dumps on a 1000-recipient body, which holds the GIL the send's
        # workers share): the library would json.dumps it again otherwise (a JSON content
        # type other than its exact "application/json" makes it send the string as it is).
        body = _Body(orjson.dumps(self.payload(batch, refused={})))
        try:
            response = self._client.client.mail.send.post(
                request_body=body, request_headers=_JSON, timeout=self.timeout
            )
        except python_http_client.exceptions.HTTPError as exc:
            if exc.status_code == 400 and (reasons := _refused_personalizations(exc.body, len(batch.deliveries))):
                raise _Refused(reasons) from None
            raise self._http_error(exc.status_code, exc.body, exc.headers) from None
        except urllib.error.URLError as exc:  # refused, DNS, TLS handshake, connect timeout
            raise DeliveryError(self._redact(f"sendgrid: cannot reach {self.host}: {exc.reason}")) from None
        except TimeoutError:  # socket.timeout is TimeoutError
            raise AmbiguousDeliveryError(
                f"sendgrid: the request was sent but no answer came from {self.host} within {self.timeout:g} s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:  # reset, closed, cut mid-answer
            raise AmbiguousDeliveryError(
                f"sendgrid: the request was sent but the connection to {self.host} broke before "
                f"the answer ({type(exc).__name__})"
            ) from None
        status = response.status_code
        if not 200 <= status < 300:
            raise self._http_error(status, response.body, response.headers)
        message_id: str | None = response.headers.get("X-Message-Id")
        return message_id

    def _http_error(
        self, status: int, body: bytes | str | None, headers: Any, permanent: bool = False
    ) -> DeliveryError:
        detail = self._redact(_error_messages(body))
        message = f"sendgrid: {self.host} answered {status}" + (f": {detail}" if detail else "")
        if permanent:
            return PermanentDeliveryError(message)
        if status == 429 or status >= 500 or status == 408:
            return DeliveryError(message, retry_after=_retry_after(headers))
        if status in _PERMANENT or 400 <= status < 500:
            return PermanentDeliveryError(message)
        return DeliveryError(message)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "[API key]") if self._api_key else text


class _Body(bytes):
    """A serialized request body the library can "encode" (it calls ``.encode("utf-8")``
    on a body with a non-default JSON content type) without copying it twice more."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self


class _Refused(Exception):
    """A 400 naming personalizations: index in the request -> SendGrid's reason."""

    def __init__(self, reasons: dict[int, str]) -> None:
        super().__init__(reasons)
        self.reasons = reasons


_PERSONALIZATION_FIELD = re.compile(r"^personalizations\.(\d+)\.")
_REFUSAL_ROUNDS = 5


def _refused_personalizations(body: bytes | str | None, count: int) -> dict[int, str]:
    """Index -> reason when every error of a 400 names a personalization of the request
    (``personalizations.3.to.0.email``); empty when any error concerns the whole request."""
    if not body:
        return {}
    try:
        errors = json.loads(body).get("errors") or []
    except (ValueError, AttributeError):
        return {}
    reasons: dict[int, str] = {}
    for error in errors:
        field = error.get("field") if isinstance(error, dict) else None
        found = _PERSONALIZATION_FIELD.match(field) if isinstance(field, str) else None
        if not found or int(found.group(1)) >= count:
            return {}
        reasons[int(found.group(1))] = f"sendgrid refused it: {field}: {error.get('message') or 'invalid'}"[:500]
    return reasons


def display_name(name: str) -> str:
    """``name`` as SendGrid's API takes it in a personalization's ``to[].name``: as it is,
    unless it holds a ``,`` or ``;`` (SendGrid then splits the recipient there and drops
    the message as sent to an invalid address), then as an RFC 5322 quoted-string: in
    double quotes, each ``"`` and ``\\`` in it escaped with a backslash: ``Lovelace, Ada``
    -> ``"Lovelace, Ada"``."""
    if "," not in name and ";" not in name:
        return name
    # The name is text, never header syntax: one already in quotes ('"Lovelace, Ada"')
    # is escaped and quoted like any other, its quotes kept as part of the name. That is
    # what the SMTP backend's headers say for it (email.headerregistry and formataddr do
    # the same), so a reader sees the same name from either backend; and guessing that
    # quotes are syntax would let a name like '"a" , "b"' reach SendGrid unescaped.
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def api_address(address: str) -> str:
    """``address`` as SendGrid's API takes it: an internationalized domain in IDNA form
    (its schema's ``format: email`` is ASCII-only), like the MIME layer writes it."""
    if address.isascii():
        return address
    return envelope_address(address)


def address_problem(address: str) -> str | None:
    """Why SendGrid's API cannot take ``address`` (None when it can): its schema has no
    room for a non-ASCII local part (SMTPUTF8), and the domain must encode to IDNA."""
    if address.isascii():
        return None
    local, _, _domain = address.rpartition("@")
    if not local.isascii():
        return "a non-ASCII local part (SMTPUTF8) is not accepted by the SendGrid API"
    try:
        envelope_address(address)
    except HeaderError as exc:
        return str(exc)
    return None


def _error_messages(body: bytes | str | None) -> str:
    """SendGrid's ``{"errors": [{"message", "field"}]}`` as one line."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        errors = json.loads(text).get("errors") or []
        parts = [
            f"{e['field']}: {e['message']}" if e.get("field") else str(e.get("message"))
            for e in errors
            if isinstance(e, dict)
        ]
    except (ValueError, AttributeError):
        parts = []
    line = "; ".join(parts) if parts else " ".join(text.split())
    return line[:500]


def _retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait: ``Retry-After`` (seconds or an HTTP date), else the epoch second
    in ``X-RateLimit-Reset``."""
    if headers is None:
        return None
    now = time.time() if now is None else now
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
            except (TypeError, ValueError):
                pass
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(0.0, float(reset) - now)
        except ValueError:
            pass
    return None
