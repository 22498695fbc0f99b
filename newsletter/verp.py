"""The delivery tokens that tie a bounce to the message it is about: every SMTP message
of a send carries one in its envelope sender (VERP: ``bounces+<token>@domain``) and in its
Message-ID, signed so that a forged DSN cannot name somebody else's delivery.

A token is ``d<ledger row id>-<16 hex digits of HMAC-SHA256>``: lower case only, since
some mail servers fold the case of a local part, and short enough for the 64 characters
a local part may have.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Final

TOKEN: Final = re.compile(r"(?<![0-9a-z])d(\d{1,18})-([0-9a-f]{16})(?![0-9a-f])", re.IGNORECASE)


class DeliveryTokens:
    """Makes and checks delivery tokens under one secret key."""

    def __init__(self, secret_key: str) -> None:
        self._key = hashlib.sha256(b"newsletter-bounce:" + secret_key.encode("utf-8")).digest()

    def _mac(self, delivery_id: int) -> str:
        return hmac.new(self._key, f"delivery:{delivery_id}".encode("ascii"), hashlib.sha256).hexdigest()[:16]

    def token(self, delivery_id: int) -> str:
        return f"d{delivery_id}-{self._mac(delivery_id)}"

    def return_path(self, address: str, delivery_id: int) -> str:
        """``bounces@example.org`` -> ``bounces+<token>@example.org``."""
        local, _, domain = address.rpartition("@")
        return f"{local}+{self.token(delivery_id)}@{domain}"

    def message_id(self, delivery_id: int, domain: str) -> str:
        """A Message-ID that names the delivery (a random part keeps it unique)."""
        return f"<{self.token(delivery_id)}.{secrets.token_hex(6)}@{domain}>"

    def delivery(self, text: str | None) -> int | None:
        """The ledger row named by the first correctly signed token in ``text`` (an
        address or a Message-ID), or None."""
        for match in TOKEN.finditer(text or ""):
            delivery_id = int(match.group(1))
            if hmac.compare_digest(match.group(2).lower(), self._mac(delivery_id)):
                return delivery_id
        return None
