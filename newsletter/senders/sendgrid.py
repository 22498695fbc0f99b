"""The SendGrid backend: one ``POST /v3/mail/send`` per batch of up to 1000
personalizations, the placeholders filled by SendGrid's ``substitutions``, and the
HTTP outcome mapped onto DeliveryError / PermanentDeliveryError.

The API key is read from the environment variable named in config and goes nowhere but
the Authorization header: not into messages, not into logs.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import time
from typing import Any

import python_http_client.exceptions
from sendgrid import SendGridAPIClient

from newsletter import render
from newsletter.config import SendgridBackend, Settings
from newsletter.errors import DeliveryError, PermanentDeliveryError
from newsletter.senders.base import Batch, BatchResult

MAX_PERSONALIZATIONS = 1000  # SendGrid's limit per request (and 1000 recipients)
MAX_CATEGORIES = 10
# custom_args keys in every personalization, so webhook events can be matched.
ISSUE_ARG = "newsletter_issue"
BATCH_ARG = "newsletter_batch"

_PERMANENT = {400, 401, 403, 404, 405, 413, 415}
_UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"
# Headers SendGrid sets itself and refuses in ``headers``.
_RESERVED = {"x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
             "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc"}


def _keep_key_out_of_logs() -> None:
    # python_http_client logs every request's headers, Authorization included, at DEBUG.
    logging.getLogger("python_http_client.client").setLevel(logging.INFO)


_JSON = {"Content-Type": "application/json; charset=utf-8"}


class SendgridSender:
    """Delivers batches through SendGrid's v3 mail send API (or a local stand-in)."""

    name = "sendgrid"

    def __init__(self, api_key: str, config: SendgridBackend = SendgridBackend()) -> None:
        if len(config.categories) > MAX_CATEGORIES:
            raise PermanentDeliveryError(f"sendgrid: at most {MAX_CATEGORIES} categories")
        _keep_key_out_of_logs()
        self._api_key = api_key
        self.host = config.host.rstrip("/")
        self.timeout = config.timeout_seconds
        self.sandbox = config.sandbox
        self.categories = list(config.categories)
        self.max_batch_size = min(config.batch_size, MAX_PERSONALIZATIONS)
        self._client = SendGridAPIClient(api_key, host=self.host)
        self._client.client.timeout = self.timeout  # the library has none by default

    @classmethod
    def from_settings(cls, settings: Settings) -> SendgridSender:
        config = settings.delivery.sendgrid
        return cls(settings.secret(config.api_key_env, "the SendGrid API key"), config)

    def __repr__(self) -> str:
        return f"SendgridSender(host={self.host!r})"  # never the key

    def payload(self, batch: Batch) -> dict[str, Any]:
        """The request body for ``batch``: plain dicts, built fast for 1000 recipients."""
        if len(batch.deliveries) > MAX_PERSONALIZATIONS:
            raise PermanentDeliveryError(
                f"sendgrid: a batch of {len(batch.deliveries)} recipients is over the "
                f"{MAX_PERSONALIZATIONS} SendGrid accepts in one request")
        mail = batch.email
        if any(c in mail.subject + mail.from_name for c in "\r\n"):
            raise PermanentDeliveryError("sendgrid: the subject or sender name contains a line break")
        custom_args = {ISSUE_ARG: batch.issue, BATCH_ARG: batch.batch_id}
        substitutions, list_unsubscribe = render.substitutions, render.list_unsubscribe
        refused = self.refused(batch)
        personalizations = [
            {
                "to": [{"email": r.email, "name": r.name} if r.name else {"email": r.email}],
                "substitutions": substitutions(r),
                "headers": {
                    "List-Unsubscribe": list_unsubscribe(mail, r),
                    "List-Unsubscribe-Post": _UNSUBSCRIBE_POST,
                },
                "custom_args": custom_args,
            }
            for r in (d.recipient for d in batch.deliveries if d.key not in refused)
        ]
        sender: dict[str, str] = {"email": mail.from_address}
        if mail.from_name:
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
        if self.sandbox:
            body["mail_settings"] = {"sandbox_mode": {"enable": True}}
        return body

    @staticmethod
    def refused(batch: Batch) -> dict[int, str]:
        """Recipients whose values would inject a header: left out of the request."""
        return {
            d.key: f"a line break in the address, name or unsubscribe URL of {d.recipient.email!r}"
            for d in batch.deliveries
            if "\n" in (text := d.recipient.email + d.recipient.name + d.recipient.unsubscribe_url)
            or "\r" in text
        }

    def send(self, batch: Batch) -> BatchResult:
        refused = self.refused(batch)
        if len(refused) == len(batch.deliveries):
            return BatchResult(rejected=refused)
        # Serialized here, compactly and without escaping non-ASCII: the library would
        # json.dumps it again otherwise (a JSON content type other than its exact
        # "application/json" makes it send the string as it is).
        body = json.dumps(self.payload(batch), ensure_ascii=False, separators=(",", ":"))
        try:
            response = self._client.client.mail.send.post(
                request_body=body, request_headers=_JSON, timeout=self.timeout)
        except python_http_client.exceptions.HTTPError as exc:
            raise self._http_error(exc.status_code, exc.body, exc.headers) from None
        except TimeoutError:  # socket.timeout is TimeoutError
            raise DeliveryError(f"sendgrid: no answer from {self.host} within {self.timeout:g} s") from None
        except OSError as exc:  # urllib.error.URLError, refused, reset, DNS
            reason = getattr(exc, "reason", None) or exc
            raise DeliveryError(self._redact(f"sendgrid: cannot reach {self.host}: {reason}")) from None
        except http.client.HTTPException as exc:  # the connection was cut mid-answer
            raise DeliveryError(f"sendgrid: broken answer from {self.host}: {type(exc).__name__}") from None
        status = response.status_code
        if not 200 <= status < 300:
            raise self._http_error(status, response.body, response.headers)
        return BatchResult(
            sent=[d.key for d in batch.deliveries if d.key not in refused],
            rejected=refused,
            message_id=response.headers.get("X-Message-Id"),
        )

    def _http_error(self, status: int, body: bytes | str | None, headers: Any) -> DeliveryError:
        detail = self._redact(_error_messages(body))
        message = f"sendgrid: {self.host} answered {status}" + (f": {detail}" if detail else "")
        if status == 429 or status >= 500 or status == 408:
            return DeliveryError(message, retry_after=_retry_after(headers))
        if status in _PERMANENT or 400 <= status < 500:
            return PermanentDeliveryError(message)
        return DeliveryError(message)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "[API key]") if self._api_key else text

    def close(self) -> None:
        pass  # urllib opens a connection per request: nothing is held


def _error_messages(body: bytes | str | None) -> str:
    """SendGrid's ``{"errors": [{"message", "field"}]}`` as one line."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        errors = json.loads(text).get("errors") or []
        parts = [
            f"{e['field']}: {e['message']}" if e.get("field") else str(e.get("message"))
            for e in errors if isinstance(e, dict)
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
