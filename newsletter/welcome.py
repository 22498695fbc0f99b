"""The welcome mail: rendered from ``templates/welcome.mjml.j2`` and ``welcome.txt.j2``
through the issue's pipeline and checks, with the latest sent issue's headline and a
link to it, sent once per subscriber after their sign-up is confirmed, and recorded in
``welcomes`` (the issue report counts them: ``report.welcomes_sent``).

Once: the row is claimed (state ``sending``) before the request, so a retried or
repeated confirmation finds it and sends nothing. A failed send becomes ``failed`` and
``retry_failed`` (``newsletter welcome retry``) tries it again; a row left ``sending``
by a process that died is not resent: like an ambiguous batch, it may have arrived.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass

from sqlalchemy import Engine, select, update

from newsletter import issuefile, links, render
from newsletter.config import Settings
from newsletter.errors import BuildError, NewsletterError
from newsletter.models import Issue
from newsletter.senders.base import Sender, send_one
from newsletter.store.db import insert_ignoring_conflicts, write_transaction
from newsletter.store.subscribers import Subscriber, get_by_id
from newsletter.store.tables import subscribers, welcomes

KIND = "welcome"  # the outbox folder and SendGrid's newsletter_issue for these
log = logging.getLogger("newsletter.welcome")


def _latest(settings: Settings) -> Issue | None:
    sent = issuefile.sent_issues(settings.issues_dir)
    return sent[0][1] if sent else None


def headline(issue: Issue) -> str:
    """What the welcome mail calls the latest issue: its lead article's title, else its subject."""
    return issue.roundup.title if issue.roundup else issue.subject


def build_welcome(settings: Settings, latest: Issue | None, today: dt.date) -> render.Built:
    """The welcome mail with ``latest`` (the newest sent issue, or None) in it."""
    pub = settings.publication
    # The latest issue's text comes from feeds: the placeholders carry a nonce from its
    # content, as the issue's own do, so that text cannot fill in a reader's address.
    seed = issuefile.checksum(latest) if latest else "none"
    nonce = hashlib.sha256(f"newsletter welcome\0{seed}".encode()).hexdigest()[:20]
    subject = settings.welcome.subject.format(name=pub.name)
    context = {
        "pub": pub,
        "subject": subject,
        "preheader": f"Thank you for subscribing to {pub.name}.",
        "year": today.year,
        "latest": latest,
        "headline": headline(latest) if latest else "",
        "links": {
            "web_version": links.web_version(pub, latest.slug) if latest else links.archive(pub),
            "archive": links.archive(pub),
            "subscribe": links.subscribe(pub),
        },
        "placeholders": render.placeholder_tokens(nonce),
        "preheader_filler": render.PREHEADER_FILLER,
        "content_width": render.CONTENT_WIDTH,
        "_tag": links.UtmTagger(settings.utm, pub, KIND, today),
    }
    return render.build_email(settings, KIND, context, slug=KIND, subject=subject, headers={"X-Newsletter-Kind": KIND})


def _claim(engine: Engine, subscriber_id: int, now: dt.datetime, *, retry: bool) -> bool:
    """Take this subscriber's welcome for sending: a new row, or (``retry``) a failed one."""
    with write_transaction(engine) as conn:
        if retry:
            return bool(
                conn.execute(
                    update(welcomes)
                    .where(welcomes.c.subscriber_id == subscriber_id, welcomes.c.state == "failed")
                    .values(state="sending", attempts=welcomes.c.attempts + 1, error=None)
                ).rowcount
            )
        # RETURNING, not rowcount: psycopg reports -1 for an INSERT ... ON CONFLICT
        inserted = conn.execute(
            insert_ignoring_conflicts(conn, welcomes, "subscriber_id")
            .values(subscriber_id=subscriber_id, state="sending", attempts=1, created_at=now)
            .returning(welcomes.c.id)
        ).first()
        return inserted is not None


def _settle(engine: Engine, subscriber_id: int, now: dt.datetime, error: str | None) -> None:
    values = {"state": "failed", "error": error[:500]} if error else {"state": "sent", "sent_at": now}
    with write_transaction(engine) as conn:
        conn.execute(update(welcomes).where(welcomes.c.subscriber_id == subscriber_id).values(**values))


def _deliver(settings: Settings, sender: Sender, subscriber: Subscriber, now: dt.datetime) -> None:
    built = build_welcome(settings, _latest(settings), now.date())
    if built.errors:
        raise BuildError(f"{settings.templates.dir}/welcome.mjml.j2: {built.errors[0]}")
    recipient = links.recipient(settings.publication, subscriber.email, subscriber.name, subscriber.token)
    send_one(sender, KIND, built.email, subscriber.id, recipient)


def send_welcome(
    engine: Engine, settings: Settings, sender: Sender, subscriber_id: int, *, now: dt.datetime, retry: bool = False
) -> bool:
    """Send the welcome mail to this subscriber unless it was sent (or is being sent)
    already; True when this call sent it. A failure is recorded (state ``failed``,
    the error's message) and raised; the subscription stays confirmed either way."""
    if not settings.welcome.enabled:
        return False
    subscriber = get_by_id(engine, subscriber_id)
    if subscriber is None or subscriber.status != "active":
        return False
    if not _claim(engine, subscriber_id, now, retry=retry):
        return False
    try:
        _deliver(settings, sender, subscriber, now)
    except NewsletterError as exc:
        _settle(engine, subscriber_id, now, f"{type(exc).__name__}: {exc}")
        raise
    except Exception as exc:  # a template or sender bug: recorded as failed, not left "sending"
        _settle(engine, subscriber_id, now, type(exc).__name__)
        raise
    _settle(engine, subscriber_id, now, None)
    return True


@dataclass(frozen=True)
class Retried:
    """What ``retry_failed`` did."""

    sent: int
    failed: int


def retry_failed(engine: Engine, settings: Settings, sender: Sender, *, now: dt.datetime) -> Retried:
    """Send again the failed welcomes of subscribers still active, tried fewer than
    ``welcome.max_attempts`` times and recorded in the last ``welcome.retry_within_days``."""
    options = settings.welcome
    since = now - dt.timedelta(days=options.retry_within_days)
    with engine.connect() as conn:
        ids = (
            conn.execute(
                select(welcomes.c.subscriber_id)
                .select_from(welcomes.join(subscribers, subscribers.c.id == welcomes.c.subscriber_id))
                .where(
                    welcomes.c.state == "failed",
                    welcomes.c.attempts < options.max_attempts,
                    welcomes.c.created_at >= since,
                    subscribers.c.status == "active",
                )
                .order_by(welcomes.c.id)
            )
            .scalars()
            .all()
        )
    sent = failed = 0
    for subscriber_id in ids:
        try:
            sent += send_welcome(engine, settings, sender, subscriber_id, now=now, retry=True)
        except NewsletterError as exc:
            failed += 1
            log.error("event=welcome_failed subscriber=%d error=%s", subscriber_id, type(exc).__name__)
    return Retried(sent=sent, failed=failed)


def count_sent(engine: Engine, since: dt.datetime, until: dt.datetime) -> int:
    """Welcome mails sent in ``[since, until)``, erased subscribers' included (the issue
    report counts them from one issue's send to the next: ``report.welcomes_sent``)."""
    from newsletter.report import welcomes_sent

    with engine.connect() as conn:
        return welcomes_sent(conn, since, until)


def state_of(engine: Engine, subscriber_id: int) -> str | None:
    """This subscriber's welcome: ``sending``, ``sent``, ``failed`` or None (none yet)."""
    with engine.connect() as conn:
        found: str | None = conn.execute(
            select(welcomes.c.state).where(welcomes.c.subscriber_id == subscriber_id)
        ).scalar_one_or_none()
    return found
