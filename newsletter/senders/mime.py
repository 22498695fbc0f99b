"""Per-recipient MIME bytes, fast: ``MessageTemplate`` assembles an issue's message once
through ``render.personalize`` and then, per recipient, only swaps four header lines and
substitutes the placeholders in the bytes. Anything unusual (non-ASCII names or
addresses, values that would fold a header or break a line) takes ``render.personalize``.

``render.personalize(email, r).as_bytes()`` costs about 2.5 ms, mostly the email
package's header parsing; the SMTP backend must send hundreds of messages a second.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import replace
from email.utils import format_datetime, formataddr, make_msgid

from newsletter import render
from newsletter.errors import HeaderError
from newsletter.models import Recipient
from newsletter.render import RenderedEmail

# The email package folds header lines at 998 characters and switches a text part to
# quoted-printable when one of its lines would be longer: stay well inside both.
_MAX_LINE = 998
_MAX_HEADER = 900
# A plain dot-atom address: what the fast path writes into To: and the envelope as is.
_SIMPLE_ADDRESS = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$"
)
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]*$")
_SWAPPED = (b"To", b"Date", b"Message-ID", b"List-Unsubscribe")


class MessageTemplate:
    """One rendered email turned into MIME bytes for any number of recipients."""

    def __init__(self, email: RenderedEmail, linesep: str = "\n") -> None:
        """``linesep``: "\n" for files, "\r\n" for SMTP (smtplib sends bytes as they are)."""
        self.email = email
        self._policy = render.email_policy.clone(linesep=linesep)
        self._eol = linesep.encode("ascii")
        self._domain = email.from_address.rpartition("@")[2]
        # Replace each placeholder by a token that no text contains and that no
        # transfer encoding or line wrapping can alter, then assemble once.
        nonce = secrets.token_hex(8)
        self._tokens = {f"x{nonce}{key}x": placeholder for key, placeholder in email.placeholders.items()}
        html, text = email.html, email.text
        for token, placeholder in self._tokens.items():
            html, text = html.replace(placeholder, token), text.replace(placeholder, token)
        probe = Recipient(email="probe@probe.invalid", name="", unsubscribe_url="https://probe.invalid/u")
        raw = render.personalize(replace(email, html=html, text=text), probe).as_bytes(policy=self._policy)
        self._fast = self._compile(raw, html, text)

    def _compile(self, raw: bytes, html: str, text: str) -> bool:
        """Split ``raw`` into literal bytes and slots; False when the fast path cannot be
        trusted for this email (then every recipient goes through render.personalize)."""
        head, sep, body = raw.partition(self._eol * 2)
        lines = head.split(self._eol)
        if not sep or any(line[:1] in (b" ", b"\t") for line in lines):
            return False  # a folded header: do not guess where it ends
        if b"quoted-printable" in body or b"base64" in body:
            return False
        names = [line.partition(b":")[0] for line in lines]
        if any(names.count(name) != 1 for name in _SWAPPED):
            return False
        # The header block in personalize's order, the swapped lines as slots.
        self._head: list[bytes | str] = [
            name.decode("ascii") if name in _SWAPPED else line for name, line in zip(names, lines, strict=False)
        ]
        tokens = {t.encode("ascii"): p for t, p in self._tokens.items()}
        pattern = re.compile(b"|".join(re.escape(t) for t in tokens))
        expected = sum(html.count(t) + text.count(t) for t in self._tokens)
        if len(pattern.findall(body)) != expected:
            return False
        boundary = re.search(rb'boundary="([^"]+)"', head)
        self._boundary = boundary.group(1).decode("ascii") if boundary else None
        # The body as alternating literal bytes and placeholder names.
        self._body: list[bytes | str] = []
        position = 0
        for m in pattern.finditer(body):
            self._body.append(body[position : m.start()])
            self._body.append(tokens[m.group(0)])
            position = m.end()
        self._body.append(body[position:])
        # For each body line that holds placeholders: its length without them, and how many.
        self._slot_lines = [
            (len(pattern.sub(b"", line)), len(pattern.findall(line)))
            for line in body.split(b"\n")
            if pattern.search(line)
        ]
        self._ascii = raw.isascii()
        return True

    @property
    def is_ascii(self) -> bool:
        """Whether the bytes are 7-bit (SMTP then needs no BODY=8BITMIME)."""
        return self._fast and self._ascii

    @property
    def domain(self) -> str:
        """The From address's domain, the right-hand side of the Message-IDs."""
        return self._domain

    def render(self, recipient: Recipient, now: dt.datetime | None = None, message_id: str | None = None) -> bytes:
        """The complete message for ``recipient`` (raises HeaderError like personalize);
        ``message_id``: its Message-ID (default: a random one)."""
        fast = self._fast and self._fast_bytes(recipient, now, message_id)
        return fast or render.personalize(self.email, recipient, now, message_id).as_bytes(policy=self._policy)

    def _fast_bytes(self, recipient: Recipient, now: dt.datetime | None, message_id: str | None) -> bytes | None:
        if not (
            _SIMPLE_ADDRESS.fullmatch(recipient.email)
            and _PRINTABLE_ASCII.fullmatch(recipient.name)
            and _PRINTABLE_ASCII.fullmatch(recipient.unsubscribe_url)
            and _PRINTABLE_ASCII.fullmatch(recipient.preferences_url)
        ):
            return None
        values = render.substitutions(self.email, recipient)
        to = formataddr((recipient.name, recipient.email))
        unsubscribe = render.list_unsubscribe(self.email, recipient)
        if not (len(to) < _MAX_HEADER and len(unsubscribe) < _MAX_HEADER and _PRINTABLE_ASCII.fullmatch(unsubscribe)):
            return None
        longest = max(map(len, values.values()))
        if any(length + count * longest > _MAX_LINE for length, count in self._slot_lines):
            return None
        if self._boundary and any(self._boundary in v for v in values.values()):
            return None
        headers = {
            "To": to,
            "Date": format_datetime(now or dt.datetime.now(dt.UTC)),
            "Message-ID": message_id or make_msgid(domain=self._domain),
            "List-Unsubscribe": unsubscribe,
        }
        head = self._eol.join(
            line if isinstance(line, bytes) else f"{line}: {headers[line]}".encode("ascii") for line in self._head
        )
        body = b"".join(part if isinstance(part, bytes) else values[part].encode("ascii") for part in self._body)
        return head + self._eol * 2 + body


def envelope_address(address: str) -> str:
    """``address`` for MAIL FROM / RCPT TO: an internationalized domain in IDNA form."""
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise HeaderError(f"not an email address: {address!r}")
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        raise HeaderError(f"invalid domain in {address!r}") from None
