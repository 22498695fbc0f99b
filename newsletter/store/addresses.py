"""Email addresses and CSV cells: validation, the normalised ``email_key`` that makes an
address unique, the suppression hash, and the checks for header injection and
spreadsheet formulas that both the importer and the exporter rely on.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from newsletter.errors import SubscriberError

# A conservative subset of what email-validator accepts, checked without it: plain ASCII
# dot-atom local parts and LDH domains. Validating a million addresses with
# email-validator costs ~26 s; this path costs ~1 s. Everything else (IDN, quoted local
# parts, unusual characters, special-use domains) goes through email-validator itself.
# tests/store/test_store_addresses.py checks the two agree.
_SIMPLE = re.compile(
    r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})"
)
_SPECIAL_USE_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})

# Characters that end a header line somewhere (CR, LF and the other Unicode line breaks)
# or are control characters nobody types into a spreadsheet. Tab is allowed.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
_LINE_BREAK = re.compile(r"[\r\n\x0b\x0c\x85\u2028\u2029]")
# Spreadsheets evaluate a cell as a formula when it starts with one of these (OWASP
# "CSV injection"); leading whitespace does not stop some of them.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(?:[.,]\d+)?")

SUPPRESSION_SALT = b"newsletter-suppression-v1:"


class Address(NamedTuple):
    """A valid address: ``email`` as given (trimmed), ``key`` unique per mailbox.
    (A named tuple: the importer makes a million of them.)"""

    email: str
    key: str


def email_key(local_part: str, ascii_domain: str) -> str:
    """Local part lowercased, domain in lowercase ASCII (punycode for IDN)."""
    return f"{local_part.lower()}@{ascii_domain.lower()}"


def check_address(value: str) -> Address:
    """Validate ``value`` (no DNS lookups) or raise ``SubscriberError`` saying why."""
    email = value.strip()
    if not email:
        raise SubscriberError("no email address")
    if _LINE_BREAK.search(email):
        raise SubscriberError("line break in the email address (header injection)")
    simple = _SIMPLE.fullmatch(email)
    if (
        simple is not None
        and len(email) <= 254
        and email.index("@") <= 64
        and "--" not in simple.group(1)
        and simple.group(1).rsplit(".", 1)[-1].lower() not in _SPECIAL_USE_TLDS
    ):
        local, _, domain = email.partition("@")
        return Address(email, email_key(local, domain))
    from email_validator import EmailNotValidError, validate_email

    try:
        valid = validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        raise SubscriberError(f"invalid email address {email!r}: {exc}") from None
    return Address(email, email_key(valid.local_part, valid.ascii_domain))


def key_for(value: str) -> str:
    """The ``email_key`` of an address, for look-ups; raises ``SubscriberError``."""
    return check_address(value).key


def suppression_hash(key: str) -> str:
    """What the suppression list keeps of a removed address: a hash of its key."""
    return hashlib.sha256(SUPPRESSION_SALT + key.encode("utf-8")).hexdigest()


def cell_problem(value: str) -> str | None:
    """Why a CSV cell must not be imported (line break, control character, formula)."""
    if _CONTROL.search(value):
        if _LINE_BREAK.search(value):
            return "line break (header injection)"
        return "control character"
    if is_formula(value):
        return f"formula content {shorten(value)!r}"
    return None


def is_formula(value: str) -> bool:
    """True when a spreadsheet could run ``value`` as a formula. Plain numbers are data."""
    stripped = value.lstrip(" \t\r\n")
    if not stripped:
        return value[:1] in ("\t", "\r")
    if stripped[0] in "=@" or value[0] in ("\t", "\r"):
        return True
    if stripped[0] in "+-":
        return _PLAIN_NUMBER.fullmatch(stripped) is None
    return False


def defuse_cell(value: str) -> str:
    """``value`` made safe to open in a spreadsheet: risky cells get a leading quote."""
    stripped = value.lstrip(" \t\r\n")
    if value[:1] in FORMULA_START or stripped[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def shorten(value: str, width: int = 40) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"
