"""Subscriber records: add, find, unsubscribe, remove (erase and suppress), list, count,
the double opt-in core (sign up with its consent history and per-address limit, confirm,
expire) and status changes from bounces and complaints. Each function is one short
transaction on the engine it is given.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from newsletter.errors import SubscriberError
from newsletter.store.addresses import check_address, key_for, suppression_hash
from newsletter.store.db import insert_ignoring_conflicts, write_transaction
from newsletter.store.tables import OPTED_OUT, STATUSES, consents, subscribers, suppressions

CONFIRMATION_TTL = dt.timedelta(days=3)
# confirmation emails to one address: at most CONFIRMATIONS_PER_WINDOW per CONFIRMATION_WINDOW
CONFIRMATIONS_PER_WINDOW = 1
CONFIRMATION_WINDOW = dt.timedelta(hours=1)
NAME_MAX = 200
# Statuses a sign-up never emails: the address bounces, or its owner reported us as spam.
NEVER_MAILED = frozenset({"bounced", "complained"})


@dataclass(frozen=True)
class Consent:
    """How a web sign-up agreed: when, from where, on which form."""

    at: dt.datetime
    ip: str | None = None
    user_agent: str | None = None
    form: str | None = None


@dataclass(frozen=True)
class Subscriber:
    id: int
    email: str
    email_key: str
    name: str
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime
    confirmed_at: dt.datetime | None
    unsubscribed_at: dt.datetime | None
    source: str
    consent: Consent | None
    attributes: Mapping[str, Any]
    token: str = field(repr=False)  # a secret: it unsubscribes


@dataclass(frozen=True)
class ConsentRecord:
    """One web sign-up's consent, as kept in the history (``consents``)."""

    at: dt.datetime
    ip: str | None
    user_agent: str | None
    form: str | None
    name: str
    expires_at: dt.datetime
    confirmed_at: dt.datetime | None


@dataclass(frozen=True)
class SignUp:
    """A web sign-up. ``confirmation_token`` is set when a confirmation email is to be
    sent; otherwise ``outcome`` says why not (the visitor is told the same either way)."""

    subscriber: Subscriber | None
    confirmation_token: str | None = field(repr=False)
    outcome: str = "mail"  # mail | active | never-mailed | suppressed | limited


@dataclass(frozen=True)
class Stats:
    by_status: dict[str, int]
    suppressed: int

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_token() -> str:
    """An unguessable token for unsubscribe links: 256 random bits after a time prefix.

    The prefix (microseconds, hex) only orders new tokens, so that the unique index on
    them grows at its end: with purely random tokens, importing a million subscribers
    into SQLite took 28 s instead of 10 s (random B-tree inserts rewrite most pages of
    the index on every commit). The secret part is ``secrets.token_urlsafe(32)``.
    """
    return f"{time.time_ns() // 1000:013x}{secrets.token_urlsafe(32)}"


def token_stream(batch: int = 1024) -> Iterator[str]:
    """Tokens like ``new_token``'s for bulk imports, made ``batch`` at a time from one
    ``secrets.token_bytes`` call: 264 random bits each (44 base64 characters) after the
    same kind of time prefix."""
    while True:
        prefix = f"{time.time_ns() // 1000:013x}"
        raw = base64.urlsafe_b64encode(secrets.token_bytes(33 * batch)).decode("ascii")
        for start in range(0, len(raw), 44):
            yield prefix + raw[start : start + 44]


def confirmation_hash(token: str) -> str:
    """What the database keeps of a confirmation token: a leaked table confirms nobody."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise SubscriberError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    return status


def check_name(name: str) -> str:
    name = name.strip()
    if any(ch in name for ch in "\r\n\x00"):
        raise SubscriberError("the name must be a single line")
    if len(name) > NAME_MAX:
        raise SubscriberError(f"the name is longer than {NAME_MAX} characters")
    return name


def from_row(row: Row[Any]) -> Subscriber:
    m = row._mapping
    consent = None
    if m["consent_at"] is not None or m["consent_ip"] or m["consent_form"]:
        consent = Consent(
            at=m["consent_at"] or m["created_at"],
            ip=m["consent_ip"],
            user_agent=m["consent_user_agent"],
            form=m["consent_form"],
        )
    return Subscriber(
        id=m["id"],
        email=m["email"],
        email_key=m["email_key"],
        name=m["name"],
        status=m["status"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        confirmed_at=m["confirmed_at"],
        unsubscribed_at=m["unsubscribed_at"],
        source=m["source"],
        consent=consent,
        attributes=dict(m["attributes"] or {}),
        token=m["token"],
    )


def _one(conn: Connection, *where: Any) -> Subscriber | None:
    row = conn.execute(select(subscribers).where(*where)).first()
    return None if row is None else from_row(row)


def _by_key(conn: Connection, key: str) -> Subscriber | None:
    return _one(conn, subscribers.c.email_key == key)


def _is_suppressed(conn: Connection, key: str) -> bool:
    found = conn.execute(
        select(suppressions.c.email_hash).where(suppressions.c.email_hash == suppression_hash(key))
    ).first()
    return found is not None


def _unsuppress(conn: Connection, key: str) -> None:
    conn.execute(delete(suppressions).where(suppressions.c.email_hash == suppression_hash(key)))


def _consent_values(consent: Consent | None) -> dict[str, Any]:
    if consent is None:
        return {}
    return {
        "consent_at": consent.at,
        "consent_ip": consent.ip,
        "consent_user_agent": (consent.user_agent or "")[:500] or None,
        "consent_form": consent.form,
    }


def add(
    engine: Engine,
    email: str,
    *,
    name: str = "",
    status: str = "active",
    source: str = "",
    attributes: Mapping[str, Any] | None = None,
    consent: Consent | None = None,
    resubscribe: bool = False,
    now: dt.datetime | None = None,
) -> Subscriber:
    """Add one subscriber. An address already on the list is an error, except that
    ``resubscribe`` re-activates someone who opted out or was removed (only do that
    with their fresh consent)."""
    if check_status(status) not in ("active", "pending"):
        raise SubscriberError(f"a new subscriber is active or pending, not {status}")
    address = check_address(email)
    name = check_name(name)
    now = now or utcnow()
    try:
        with write_transaction(engine) as conn:
            existing = _by_key(conn, address.key)
            if existing is not None:
                if not (resubscribe and existing.status in OPTED_OUT):
                    hint = " (use --resubscribe only with their fresh consent)" if existing.status in OPTED_OUT else ""
                    raise SubscriberError(f"{email} is already on the list ({existing.status}){hint}")
                conn.execute(
                    update(subscribers)
                    .where(subscribers.c.id == existing.id)
                    .values(
                        status=status,
                        name=name or existing.name,
                        updated_at=now,
                        unsubscribed_at=None,
                        **_consent_values(consent),
                    )
                )
                found = _by_key(conn, address.key)
                assert found is not None
                return found
            if _is_suppressed(conn, address.key):
                if not resubscribe:
                    raise SubscriberError(
                        f"{email} was removed from the list at their request and is suppressed "
                        "(use --resubscribe only with their fresh consent)"
                    )
                _unsuppress(conn, address.key)
            conn.execute(
                subscribers.insert().values(
                    email=address.email,
                    email_key=address.key,
                    name=name,
                    status=status,
                    created_at=now,
                    updated_at=now,
                    confirmed_at=now if status == "active" and consent is not None else None,
                    source=source,
                    attributes=dict(attributes or {}),
                    token=new_token(),
                    **_consent_values(consent),
                )
            )
            found = _by_key(conn, address.key)
            assert found is not None
            return found
    except IntegrityError:  # PostgreSQL: someone added the address at the same moment
        raise SubscriberError(f"{email} is already on the list") from None


def get(engine: Engine, email: str) -> Subscriber | None:
    """The subscriber with this address (any case, IDN or punycode), or None."""
    key = key_for(email)
    with engine.connect() as conn:
        return _by_key(conn, key)


def get_by_token(engine: Engine, token: str) -> Subscriber | None:
    with engine.connect() as conn:
        return _one(conn, subscribers.c.token == token)


def get_by_id(engine: Engine, subscriber_id: int) -> Subscriber | None:
    with engine.connect() as conn:
        return _one(conn, subscribers.c.id == subscriber_id)


def _set_unsubscribed(conn: Connection, found: Subscriber, now: dt.datetime) -> Subscriber:
    if found.status in OPTED_OUT:  # bounced and complained say more; keep them
        return found
    conn.execute(
        update(subscribers)
        .where(subscribers.c.id == found.id)
        .values(
            status="unsubscribed",
            unsubscribed_at=now,
            updated_at=now,
            confirmation_hash=None,
            confirmation_expires_at=None,
        )
    )
    changed = _one(conn, subscribers.c.id == found.id)
    assert changed is not None
    return changed


def unsubscribe(engine: Engine, email: str, *, now: dt.datetime | None = None) -> Subscriber:
    """Stop mail to ``email``; unsubscribing twice changes nothing."""
    key = key_for(email)
    with write_transaction(engine) as conn:
        found = _by_key(conn, key)
        if found is None:
            raise SubscriberError(f"{email} is not on the list")
        return _set_unsubscribed(conn, found, now or utcnow())


def unsubscribe_by_token(engine: Engine, token: str, *, now: dt.datetime | None = None) -> Subscriber:
    """The one-click unsubscribe link: stop mail to whoever holds ``token``."""
    with write_transaction(engine) as conn:
        found = _one(conn, subscribers.c.token == token)
        if found is None:
            raise SubscriberError("this unsubscribe link is not valid")
        return _set_unsubscribed(conn, found, now or utcnow())


def remove(engine: Engine, email: str, *, now: dt.datetime | None = None) -> bool:
    """Erase everything about ``email`` and suppress it: a later import or add cannot
    bring it back. Returns whether a subscriber was on the list (the address is
    suppressed either way)."""
    key = key_for(email)
    with write_transaction(engine) as conn:
        erased = conn.execute(delete(subscribers).where(subscribers.c.email_key == key)).rowcount
        conn.execute(
            insert_ignoring_conflicts(conn, suppressions, "email_hash").values(
                email_hash=suppression_hash(key), reason="removed", created_at=now or utcnow()
            )
        )
    return bool(erased)


def is_suppressed(engine: Engine, email: str) -> bool:
    with engine.connect() as conn:
        return _is_suppressed(conn, key_for(email))


def list_subscribers(
    engine: Engine,
    *,
    status: str | None = None,
    search: str | None = None,
    limit: int = 100,
    after_id: int = 0,
) -> list[Subscriber]:
    """Up to ``limit`` subscribers by id after ``after_id``; ``search`` matches part of
    the address or the name, in any case."""
    query = select(subscribers).where(subscribers.c.id > after_id)
    if status is not None:
        query = query.where(subscribers.c.status == check_status(status))
    if search:
        needle = search.strip().lower()
        query = query.where(
            or_(
                subscribers.c.email_key.contains(needle, autoescape=True),
                func.lower(subscribers.c.email).contains(needle, autoescape=True),
                func.lower(subscribers.c.name).contains(needle, autoescape=True),
            )
        )
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(subscribers.c.id).limit(limit)).all()
    return [from_row(row) for row in rows]


def count(engine: Engine, status: str | None = None) -> int:
    query = select(func.count()).select_from(subscribers)
    if status is not None:
        query = query.where(subscribers.c.status == check_status(status))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def stats(engine: Engine) -> Stats:
    """Subscribers by status (every status, zero included) and the suppression count."""
    with engine.connect() as conn:
        rows = conn.execute(select(subscribers.c.status, func.count()).group_by(subscribers.c.status)).all()
        suppressed = conn.execute(select(func.count()).select_from(suppressions)).scalar_one()
    by_status = dict.fromkeys(STATUSES, 0)
    by_status.update({status: int(n) for status, n in rows})
    return Stats(by_status=by_status, suppressed=int(suppressed))


# -- double opt-in ------------------------------------------------------------------


def sign_up(
    engine: Engine,
    email: str,
    *,
    consent: Consent,
    name: str = "",
    source: str = "web",
    ttl: dt.timedelta = CONFIRMATION_TTL,
    per_window: int = CONFIRMATIONS_PER_WINDOW,
    window: dt.timedelta = CONFIRMATION_WINDOW,
    now: dt.datetime | None = None,
) -> SignUp:
    """A web sign-up: a pending subscriber with a confirmation token to email them.

    No token (so no email), and nothing changed, when the address is active, bounced or
    complained, was erased at its owner's request (suppressed), or was sent
    ``per_window`` confirmations in the last ``window`` (a form cannot be used to flood
    someone's inbox). Tell the visitor the same thing in every case, so the form does
    not reveal who is subscribed. Otherwise the sign-up is appended to the consent
    history and gets a new link; an existing record keeps its name and first consent
    until the link is followed. Someone who unsubscribed may sign up again: confirming
    is their fresh consent, and until then nothing changes for them.
    """
    address = check_address(email)
    name = check_name(name)
    now = now or utcnow()
    try:
        return _sign_up(engine, address.email, address.key, consent, name, source, ttl, per_window, window, now)
    except IntegrityError:  # PostgreSQL: the same address signed up at the same moment; that one mails
        return SignUp(None, None, "limited")


def _sign_up(
    engine: Engine,
    email: str,
    key: str,
    consent: Consent,
    name: str,
    source: str,
    ttl: dt.timedelta,
    per_window: int,
    window: dt.timedelta,
    now: dt.datetime,
) -> SignUp:
    with write_transaction(engine) as conn:
        # locked: two sign-ups for one address at once count each other's emails
        row = conn.execute(select(subscribers).where(subscribers.c.email_key == key).with_for_update()).first()
        existing = None if row is None else from_row(row)
        if existing is None and _is_suppressed(conn, key):
            return SignUp(None, None, "suppressed")
        if existing is not None and existing.status == "active":
            return SignUp(existing, None, "active")
        if existing is not None and existing.status in NEVER_MAILED:
            return SignUp(existing, None, "never-mailed")
        if existing is not None and _confirmations_since(conn, existing.id, now - window) >= per_window:
            return SignUp(existing, None, "limited")
        token = secrets.token_urlsafe(32)
        pending = {
            "confirmation_hash": confirmation_hash(token),
            "confirmation_expires_at": now + ttl,
            "updated_at": now,
        }
        if existing is not None:
            conn.execute(update(subscribers).where(subscribers.c.id == existing.id).values(**pending))
        else:
            conn.execute(
                subscribers.insert().values(
                    email=email,
                    email_key=key,
                    name=name,
                    status="pending",
                    created_at=now,
                    source=source,
                    attributes={},
                    token=new_token(),
                    **pending,
                    **_consent_values(consent),
                )
            )
        found = _by_key(conn, key)
        assert found is not None
        conn.execute(
            consents.insert().values(
                subscriber_id=found.id,
                at=consent.at,
                ip=consent.ip,
                user_agent=(consent.user_agent or "")[:500] or None,
                form=consent.form,
                name=name,
                expires_at=now + ttl,
            )
        )
        return SignUp(found, token)


def _confirmations_since(conn: Connection, subscriber_id: int, since: dt.datetime) -> int:
    """Confirmation emails sent to this subscriber since ``since``: one per recorded sign-up."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(consents)
            .where(consents.c.subscriber_id == subscriber_id, consents.c.at > since)
        ).scalar_one()
    )


def consent_history(engine: Engine, subscriber_id: int) -> list[ConsentRecord]:
    """Every web sign-up's consent for this subscriber, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(consents).where(consents.c.subscriber_id == subscriber_id).order_by(consents.c.at, consents.c.id)
        ).all()
    return [
        ConsentRecord(
            at=r.at,
            ip=r.ip,
            user_agent=r.user_agent,
            form=r.form,
            name=r.name,
            expires_at=r.expires_at,
            confirmed_at=r.confirmed_at,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class _Confirmable:
    id: int
    email: str
    email_key: str


def _pending(conn: Connection, token: str, now: dt.datetime) -> _Confirmable:
    """The subscriber a confirmation token belongs to, if it is valid now."""
    found = conn.execute(
        select(
            subscribers.c.id, subscribers.c.email, subscribers.c.email_key, subscribers.c.confirmation_expires_at
        ).where(subscribers.c.confirmation_hash == confirmation_hash(token))
    ).first()
    if found is None:
        raise SubscriberError("this confirmation link is not valid, or was used already")
    if found.confirmation_expires_at is None or found.confirmation_expires_at < now:
        raise SubscriberError("this confirmation link has expired: please sign up again")
    return _Confirmable(id=found.id, email=found.email, email_key=found.email_key)


def confirmable(engine: Engine, token: str, *, now: dt.datetime | None = None) -> str:
    """The address a valid confirmation token would confirm; changes nothing (the page a
    link scanner may fetch)."""
    with engine.connect() as conn:
        return _pending(conn, token, now or utcnow()).email


def confirm(engine: Engine, token: str, *, now: dt.datetime | None = None) -> Subscriber:
    """The confirmation link was followed (and its button pressed): the subscriber
    becomes active, with the name given at that sign-up if one was."""
    now = now or utcnow()
    with write_transaction(engine) as conn:
        found = _pending(conn, token, now)
        latest = conn.execute(
            select(consents.c.id, consents.c.name)
            .where(consents.c.subscriber_id == found.id)
            .order_by(consents.c.id.desc())
            .limit(1)
        ).first()
        values: dict[str, Any] = {}
        if latest is not None:
            conn.execute(update(consents).where(consents.c.id == latest.id).values(confirmed_at=now))
            if latest.name:
                values["name"] = latest.name
        conn.execute(
            update(subscribers)
            .where(subscribers.c.id == found.id)
            .values(
                status="active",
                confirmed_at=now,
                unsubscribed_at=None,
                updated_at=now,
                confirmation_hash=None,
                confirmation_expires_at=None,
                **values,
            )
        )
        _unsuppress(conn, found.email_key)
        confirmed = _one(conn, subscribers.c.id == found.id)
        assert confirmed is not None
        return confirmed


@dataclass(frozen=True)
class Expired:
    """What ``expire_pending`` forgot."""

    subscribers: int  # pending sign-ups deleted, consent history and all
    consents: int  # unconfirmed sign-ups of other subscribers (e.g. a returning one)


def expire_pending(engine: Engine, *, now: dt.datetime | None = None) -> Expired:
    """Forget sign-ups nobody confirmed in time: pending subscribers with an expired
    token are deleted (their data was never consented to), as are the unconfirmed
    sign-ups recorded for anyone else; other expired tokens are cleared."""
    now = now or utcnow()
    expired = subscribers.c.confirmation_expires_at < now
    with write_transaction(engine) as conn:
        deleted = conn.execute(delete(subscribers).where(expired, subscribers.c.status == "pending")).rowcount
        conn.execute(update(subscribers).where(expired).values(confirmation_hash=None, confirmation_expires_at=None))
        forgotten = conn.execute(
            delete(consents).where(consents.c.confirmed_at.is_(None), consents.c.expires_at < now)
        ).rowcount
    return Expired(subscribers=int(deleted), consents=int(forgotten))


def mark_status(engine: Engine, token_or_id: str | int, status: str, *, now: dt.datetime | None = None) -> Subscriber:
    """Set a subscriber's status (a bounce, a complaint, an unsubscribe reported by the
    delivery service), finding them by unsubscribe token or by id."""
    check_status(status)
    now = now or utcnow()
    where = subscribers.c.id == token_or_id if isinstance(token_or_id, int) else subscribers.c.token == token_or_id
    with write_transaction(engine) as conn:
        found = _one(conn, where)
        if found is None:
            raise SubscriberError(
                f"no subscriber with {'id' if isinstance(token_or_id, int) else 'token'} "
                f"{token_or_id if isinstance(token_or_id, int) else str(token_or_id)[:8] + '...'}"
            )
        if found.status == status:
            return found
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if status in OPTED_OUT:
            values.update(confirmation_hash=None, confirmation_expires_at=None)
        if status == "unsubscribed":
            values["unsubscribed_at"] = now
        if status == "active":
            values["unsubscribed_at"] = None
        conn.execute(update(subscribers).where(subscribers.c.id == found.id).values(**values))
        changed = _one(conn, subscribers.c.id == found.id)
        assert changed is not None
        return changed
