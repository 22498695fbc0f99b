"""The issue report: what happened to one sent issue, computed with SQL aggregates over
the send ledger and the events (``webhook_events``, from SendGrid's webhook, the DSN
reader and the project's own redirect and pixel), and the comparison of recent issues.

Every event figure is one aggregate query that an index covers (``ix_webhook_events_report``;
on SQLite the distinct readers through ``ix_webhook_events_readers``), so a report on an
issue sent to a million readers reads indexes, not the events; the ledger's states are
counted over the send's rows. Nothing here prints.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, Engine, func, select, text

from newsletter.errors import NewsletterError
from newsletter.store import ledger
from newsletter.store.events import ONE_CLICK
from newsletter.store.tables import deliveries, sends, tracked_links, tracked_sends, webhook_events, welcomes

CHART_HOURS: Final = 72
COMPARED_ISSUES: Final = 12

OPENS_CAVEAT: Final = (
    "Opens are inflated by Apple Mail Privacy Protection (it loads every image) and "
    "undercounted where images are blocked: compare issues, do not read them as readers."
)


class ReportError(NewsletterError):
    """A report that cannot be made: the issue was never sent."""

    status = 404


@dataclass(frozen=True)
class LinkClicks:
    """One link of the email: where it is (``position``, None for a URL the email did
    not hold as sent), its label, its clicks and (per_subscriber tracking) its clickers."""

    position: int | None
    url: str
    label: str
    clicks: int
    unique_clickers: int | None


@dataclass(frozen=True)
class Hour:
    """Opens and clicks in one hour after the send started (hour 0 is the first)."""

    hour: int
    opens: int
    clicks: int


@dataclass(frozen=True)
class Ledger:
    """The send ledger's side: the frozen audience and what became of each row."""

    audience: int = 0
    sent: int = 0
    rejected: int = 0
    ambiguous: int = 0
    unsent: int = 0  # still pending or in flight
    skipped: int = 0  # opted out between the freeze and their batch


@dataclass(frozen=True)
class Engagement:
    """The events' side: deliveries, failures, opt-outs, opens and clicks. A unique
    figure is None when the events name no reader (tracking ``aggregate``)."""

    delivered: int = 0
    deferred: int = 0
    bounced_hard: int = 0
    bounced_soft: int = 0
    dropped: int = 0
    spam_complaints: int = 0
    unsubscribes: int = 0
    one_click_unsubscribes: int = 0
    opens: int = 0
    unique_opens: int | None = None
    clicks: int = 0
    unique_clicks: int | None = None


@dataclass(frozen=True)
class IssueReport:
    """Everything the report shows about one issue."""

    issue: str
    subject: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    ledger: Ledger
    engagement: Engagement
    tracking: dict[str, str]  # clicks/opens modes it was sent with ({} when not recorded)
    # welcome mails sent to new readers from this issue's send until the next issue's
    welcome_mails: int = 0
    links: list[LinkClicks] = field(default_factory=list)
    hours: list[Hour] = field(default_factory=list)

    @property
    def rates(self) -> Rates:
        return Rates.of(self.ledger, self.engagement)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601, the rates and the opens caveat included."""
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        data["rates"] = asdict(self.rates)
        data["opens_caveat"] = OPENS_CAVEAT
        return data


@dataclass(frozen=True)
class Rates:
    """Shares of the sent messages (None when nothing was sent): delivered, clicked
    (unique clickers when known, else clicks), unsubscribed, complained."""

    delivery: float | None
    click: float | None
    click_is_unique: bool
    unsubscribe: float | None
    complaint: float | None

    @classmethod
    def of(cls, ledger: Ledger, engagement: Engagement) -> Rates:
        base = ledger.sent
        unique = engagement.unique_clicks is not None

        def share(n: int) -> float | None:
            return n / base if base else None

        clicked = engagement.unique_clicks if engagement.unique_clicks is not None else engagement.clicks
        return cls(
            delivery=share(engagement.delivered),
            click=share(clicked),
            click_is_unique=unique,
            unsubscribe=share(engagement.unsubscribes),
            complaint=share(engagement.spam_complaints),
        )


@dataclass(frozen=True)
class ComparedIssue:
    """One row of the comparison of recent issues."""

    issue: str
    subject: str
    started_at: dt.datetime
    sent: int
    rates: Rates


# --- queries ---------------------------------------------------------------------------


def _ledger(conn: Connection, send_id: int, audience: int) -> Ledger:
    counts = ledger.state_counts(conn, send_id)
    return Ledger(
        audience=audience,
        sent=counts.sent,
        rejected=counts.rejected,
        ambiguous=counts.ambiguous,
        unsent=counts.pending + counts.in_flight,
        skipped=counts.skipped,
    )


def _engagements(conn: Connection, issues: list[str]) -> dict[str, Engagement]:
    """The events' figures of several issues in three grouped queries."""
    t = webhook_events
    figures: dict[str, dict[str, int | None]] = {issue: {} for issue in issues}
    # in the index's order (issue, event): no sort, no distinct over three million rows
    for issue, event, total in conn.execute(
        select(t.c.issue, t.c.event, func.count()).where(t.c.issue.in_(issues)).group_by(t.c.issue, t.c.event)
    ):
        figures[issue][str(event)] = int(total)
    for issue, bounce, total in conn.execute(
        select(t.c.issue, t.c.bounce_type, func.count())
        .where(t.c.issue.in_(issues), t.c.event == "bounce")
        .group_by(t.c.issue, t.c.bounce_type)
    ):
        figures[issue][f"bounced_{bounce}"] = int(total)
    for issue, event, readers in conn.execute(
        select(t.c.issue, t.c.event, func.count(t.c.delivery_id.distinct()))
        .where(t.c.issue.in_(issues), t.c.event.in_(("open", "click")))
        .group_by(t.c.issue, t.c.event)
    ):
        if readers:
            figures[issue][f"unique_{event}"] = int(readers)
    for issue, total in conn.execute(
        select(t.c.issue, func.count())
        .where(t.c.issue.in_(issues), t.c.event == "unsubscribe", t.c.reason == ONE_CLICK)
        .group_by(t.c.issue)
    ):
        figures[issue]["one_click"] = int(total)
    result: dict[str, Engagement] = {}
    for issue, row in figures.items():

        def n(name: str, row: dict[str, int | None] = row) -> int:
            return int(row.get(name) or 0)

        result[issue] = Engagement(
            delivered=n("delivered"),
            deferred=n("deferred"),
            bounced_hard=n("bounced_hard"),
            bounced_soft=n("bounced_soft"),
            dropped=n("dropped"),
            spam_complaints=n("spamreport"),
            unsubscribes=n("unsubscribe") + n("group_unsubscribe"),
            one_click_unsubscribes=n("one_click"),
            opens=n("open"),
            unique_opens=row.get("unique_open"),
            clicks=n("click"),
            unique_clicks=row.get("unique_click"),
        )
    return result


def _links(conn: Connection, issue: str) -> list[LinkClicks]:
    """Clicks per URL, in the email's order; URLs clicked that the email did not hold
    as recorded (an older send, a forwarded copy's rewriting) follow, most clicked first."""
    t = webhook_events
    clicked = {
        str(url): (int(total), int(readers))
        for url, total, readers in conn.execute(
            select(t.c.reason, func.count(), func.count(t.c.delivery_id.distinct()))
            .where(t.c.issue == issue, t.c.event == "click")
            .group_by(t.c.reason)
        )
        if url is not None
    }
    result: list[LinkClicks] = []
    for link in conn.execute(
        select(tracked_links.c.position, tracked_links.c.url, tracked_links.c.label)
        .where(tracked_links.c.issue == issue)
        .order_by(tracked_links.c.position)
    ):
        total, readers = clicked.pop(link.url, (0, 0))
        result.append(LinkClicks(int(link.position), link.url, link.label, total, readers or None))
    for url, (total, readers) in sorted(clicked.items(), key=lambda item: (-item[1][0], item[0])):
        result.append(LinkClicks(None, url, "", total, readers or None))
    return result


def _hours(conn: Connection, issue: str, start: dt.datetime) -> list[Hour]:
    """Opens and clicks in each hour after the send started: one index range count per
    hour and event (``ix_webhook_events_issue_event_occurred_at``), which reads index
    entries in order instead of sorting a million events into hours."""
    t = webhook_events
    hours = []
    for hour in range(CHART_HOURS):
        since = start + dt.timedelta(hours=hour)
        counts = []
        for event in ("open", "click"):
            counts.append(
                conn.execute(
                    select(func.count()).where(
                        t.c.issue == issue,
                        t.c.event == event,
                        t.c.occurred_at >= since,
                        t.c.occurred_at < since + dt.timedelta(hours=1),
                    )
                ).scalar_one()
            )
        hours.append(Hour(hour, int(counts[0]), int(counts[1])))
    return hours


def welcomes_sent(conn: Connection, since: dt.datetime, until: dt.datetime | None = None) -> int:
    """Welcome mails sent from ``since`` until ``until`` (None: so far), erased readers'
    included (``welcome`` records each one)."""
    where = [welcomes.c.state == "sent", welcomes.c.sent_at >= since]
    if until is not None:
        where.append(welcomes.c.sent_at < until)
    return int(conn.execute(select(func.count()).select_from(welcomes).where(*where)).scalar_one())


def issue_report(engine: Engine, issue: str) -> IssueReport:
    """The report on ``issue`` (its slug) as the ledger and the events stand now."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # these aggregates run once each: compiling them (JIT) costs more than it saves
            conn.execute(text("SET LOCAL jit = off"))
        send = conn.execute(select(sends).where(sends.c.issue == issue)).first()
        if send is None:
            raise ReportError(f"{issue}: no send of this issue is recorded (`newsletter send` records one)")
        tracking = conn.execute(
            select(tracked_sends.c.clicks, tracked_sends.c.opens).where(tracked_sends.c.issue == issue)
        ).first()
        following = conn.execute(
            select(func.min(sends.c.created_at)).where(sends.c.created_at > send.created_at)
        ).scalar_one_or_none()
        return IssueReport(
            issue=issue,
            subject=send.subject,
            started_at=send.created_at,
            finished_at=send.finished_at,
            ledger=_ledger(conn, send.id, send.audience),
            engagement=_engagements(conn, [issue])[issue],
            tracking={"clicks": tracking.clicks, "opens": tracking.opens} if tracking else {},
            welcome_mails=welcomes_sent(conn, send.created_at, following),
            links=_links(conn, issue),
            hours=_hours(conn, issue, send.created_at),
        )


def compare_issues(engine: Engine, last: int = COMPARED_ISSUES) -> list[ComparedIssue]:
    """The ``last`` issues sent, newest first, with their rates side by side."""
    with engine.connect() as conn:
        recent = conn.execute(select(sends).order_by(sends.c.created_at.desc(), sends.c.id.desc()).limit(last)).all()
        if not recent:
            return []
        engagement = _engagements(conn, [s.issue for s in recent])
        sent: dict[int, int] = dict(
            conn.execute(
                select(deliveries.c.send_id, func.count())
                .where(deliveries.c.send_id.in_([s.id for s in recent]), deliveries.c.state == "sent")
                .group_by(deliveries.c.send_id)
            ).all()
        )
    rows = []
    for s in recent:
        ledger = Ledger(audience=s.audience, sent=int(sent.get(s.id, 0)))
        rows.append(ComparedIssue(s.issue, s.subject, s.created_at, ledger.sent, Rates.of(ledger, engagement[s.issue])))
    return rows


# --- output ---------------------------------------------------------------------------


def _figure(value: int | float | None, percent: bool = False) -> str:
    if value is None:
        return "not recorded"
    return f"{value * 100:.1f} %" if percent else f"{value:,}"


def figure_rows(found: IssueReport) -> list[tuple[str, str, str]]:
    """(section, figure, value) rows of a report, for the table and CSV outputs."""
    led, eng, rates = found.ledger, found.engagement, found.rates
    rows = [
        ("sending", "audience frozen", _figure(led.audience)),
        ("sending", "sent", _figure(led.sent)),
        ("sending", "rejected", _figure(led.rejected)),
        ("sending", "ambiguous", _figure(led.ambiguous)),
        ("sending", "not sent yet", _figure(led.unsent)),
        ("sending", "skipped", _figure(led.skipped)),
        ("sending", "welcome mails to new readers until the next issue", _figure(found.welcome_mails)),
        ("delivery", "delivered", _figure(eng.delivered)),
        ("delivery", "delivery rate", _figure(rates.delivery, percent=True)),
        ("delivery", "deferred", _figure(eng.deferred)),
        ("delivery", "bounced hard", _figure(eng.bounced_hard)),
        ("delivery", "bounced soft", _figure(eng.bounced_soft)),
        ("delivery", "dropped", _figure(eng.dropped)),
        ("delivery", "spam complaints", _figure(eng.spam_complaints)),
        ("delivery", "unsubscribes", _figure(eng.unsubscribes)),
        ("delivery", "one-click unsubscribes", _figure(eng.one_click_unsubscribes)),
        ("delivery", "unsubscribe rate", _figure(rates.unsubscribe, percent=True)),
        ("engagement", "opens (see the caveat)", _figure(eng.opens)),
        ("engagement", "unique opens", _figure(eng.unique_opens)),
        ("engagement", "clicks", _figure(eng.clicks)),
        ("engagement", "unique clickers", _figure(eng.unique_clicks)),
        ("engagement", "click rate" + ("" if rates.click_is_unique else " (clicks)"), _figure(rates.click, True)),
    ]
    for link in found.links:
        place = "-" if link.position is None else str(link.position + 1)
        name = f"{place}. {link.label or '(no text)'} <{link.url}>"
        rows.append(("links", name, f"{_figure(link.clicks)} clicks, {_figure(link.unique_clickers)} clickers"))
    return rows
