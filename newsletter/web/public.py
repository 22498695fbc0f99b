"""The public pages the emails link to: one-click unsubscribe (RFC 8058), the sign-up
form with double opt-in, the confirmation page (its button confirms, the link alone does
not, and the welcome mail follows), and the archive of sent issues (its feed and
sharing tags are in ``feed``, the readers' preferences in ``preferences``). Each
route parses its input and calls the store or render; the answers reveal nothing about
who is subscribed.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Form, Request
from fastapi.responses import HTMLResponse, Response

from newsletter import confirmation, links, welcome
from newsletter.errors import NewsletterError, SubscriberError
from newsletter.store import events, subscribers
from newsletter.store.addresses import check_address
from newsletter.web import feed
from newsletter.web.context import WebContext, context
from newsletter.web.issues import find_issue, sent_issues, web_version
from newsletter.web.problems import BadRequest, LinkNotValid, NotFound, TooManyRequests
from newsletter.web.security import CSRF_COOKIE, CSRF_FIELD, CsrfSigner, Forbidden

log = logging.getLogger("newsletter.web")
router = APIRouter()

_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,100}")
ONE_CLICK = "One-Click"
EMAIL_POLICY = (
    "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
SUBSCRIBE_FORM = "web:/subscribe"


def link_token(token: str, what: str) -> str:
    """``token`` from a link in an email, if it has a token's shape; else LinkNotValid."""
    if not _TOKEN.fullmatch(token):
        raise LinkNotValid(f"This {what} link is not valid.")
    return token


def masked(email: str) -> str:
    """a***@example.org: enough for the reader to recognise, little for anyone else."""
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}***@{domain}" if local else "***"


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def csrf_pair(request: Request, ctx: WebContext) -> tuple[str, str]:
    """This visitor's CSRF cookie (kept if they have one) and a fresh form token for it."""
    cookie = request.cookies.get(CSRF_COOKIE)
    if not CsrfSigner.usable_cookie(cookie):
        cookie = CsrfSigner.new_cookie()
    assert cookie is not None
    return cookie, ctx.csrf.token(cookie, ctx.clock().timestamp())


def with_csrf_cookie(response: Response, ctx: WebContext, cookie: str) -> Response:
    response.set_cookie(
        CSRF_COOKIE,
        cookie,
        max_age=ctx.csrf.max_age,
        httponly=True,
        samesite="lax",
        secure=ctx.settings.publication.public_url.startswith("https://"),
        path="/",
    )
    return response


def check_csrf(request: Request, ctx: WebContext, token: str) -> None:
    if not ctx.csrf.valid(request.cookies.get(CSRF_COOKIE), token, ctx.clock().timestamp()):
        raise Forbidden("This form has expired or was not sent from this site. Please reload the page and try again.")


# --- unsubscribe -------------------------------------------------------------------------


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, summary="Unsubscribe page")
def unsubscribe_page(token: str, request: Request) -> Response:
    """The page behind the email's unsubscribe link: one button, and a way back."""
    ctx = context(request)
    found = subscribers.get_by_token(ctx.engine, link_token(token, "unsubscribe"))
    if found is None:
        raise LinkNotValid("This unsubscribe link is not valid.")
    return ctx.page(
        request,
        "unsubscribe.html",
        token=token,
        email=masked(found.email),
        already=found.status in ("unsubscribed", "bounced", "complained"),
        subscribe_url="/subscribe",
    )


@router.post("/unsubscribe/{token}", response_class=HTMLResponse, summary="One-click unsubscribe (RFC 8058)")
def unsubscribe_now(
    token: str,
    request: Request,
    list_unsubscribe: Annotated[str, Form(alias="List-Unsubscribe", max_length=100)],
) -> Response:
    """``List-Unsubscribe=One-Click``: no cookie, no login; unsubscribing twice is fine."""
    if list_unsubscribe != ONE_CLICK:
        raise BadRequest("The body must be List-Unsubscribe=One-Click.")
    ctx = context(request)
    try:
        gone = subscribers.unsubscribe_by_token(ctx.engine, link_token(token, "unsubscribe"), now=ctx.clock())
    except SubscriberError:
        raise LinkNotValid("This unsubscribe link is not valid.") from None
    events.record_unsubscribe(ctx.engine, gone.id, ctx.clock())  # the issue report's one-click count
    log.info("event=unsubscribed via=web")
    return ctx.page(request, "unsubscribed.html", subscribe_url="/subscribe")


# --- sign-up with double opt-in --------------------------------------------------------


@router.get("/subscribe", response_class=HTMLResponse, summary="Sign-up form")
def subscribe_form(request: Request) -> Response:
    ctx = context(request)
    cookie, token = csrf_pair(request, ctx)
    page = ctx.page(request, "subscribe.html", csrf_field=CSRF_FIELD, csrf_token=token, error=None, email="", name="")
    return with_csrf_cookie(page, ctx, cookie)


def _send_confirmation(ctx: WebContext, found: subscribers.Subscriber, token: str) -> None:
    """Runs after the answer is sent, so known and new addresses take equally long."""
    try:
        with ctx.sender() as sender:
            confirmation.send_confirmation(ctx.settings, sender, found, token)
    except NewsletterError as exc:
        log.error("event=confirmation_failed subscriber=%d error=%s", found.id, type(exc).__name__)
    else:
        log.info("event=confirmation_sent subscriber=%d", found.id)


@router.post("/subscribe", response_class=HTMLResponse, summary="Sign up (double opt-in)")
def subscribe(
    request: Request,
    background: BackgroundTasks,
    email: Annotated[str, Form(max_length=320)],
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """A pending subscriber and a confirmation email; the same answer for every address."""
    ctx = context(request)
    check_csrf(request, ctx, csrf_token)
    try:
        check = check_address(email)
        subscribers.check_name(name)
    except SubscriberError as exc:
        cookie, token = csrf_pair(request, ctx)
        page = ctx.page(
            request,
            "subscribe.html",
            status=400,
            csrf_field=CSRF_FIELD,
            csrf_token=token,
            error=str(exc),
            email=email,
            name=name,
        )
        return with_csrf_cookie(page, ctx, cookie)
    now = ctx.clock()
    wait = ctx.limiter.hit(client_address(request), now.timestamp())
    if wait is not None:
        raise TooManyRequests("Too many sign-ups from your network. Please try again later.", wait)
    consent = subscribers.Consent(
        at=now, ip=client_address(request)[:45], user_agent=request.headers.get("user-agent"), form=SUBSCRIBE_FORM
    )
    web = ctx.settings.web
    signed = subscribers.sign_up(
        ctx.engine,
        check.email,
        consent=consent,
        name=name,
        now=now,
        per_window=web.confirmations_per_address,
        window=dt.timedelta(minutes=web.confirmation_window_minutes),
    )
    if signed.confirmation_token is not None and signed.subscriber is not None:
        background.add_task(_send_confirmation, ctx, signed.subscriber, signed.confirmation_token)
    else:  # the same answer: nothing tells the visitor which case this was
        log.info("event=confirmation_not_sent reason=%s", signed.outcome)
    return ctx.page(request, "subscribe_sent.html")


@router.get("/confirm/{token}", response_class=HTMLResponse, summary="The confirmation page")
def confirm_page(token: str, request: Request) -> Response:
    """What the emailed link opens: a button that confirms. The GET changes nothing, so a
    mail scanner that follows every link subscribes nobody."""
    ctx = context(request)
    try:
        email = subscribers.confirmable(ctx.engine, link_token(token, "confirmation"), now=ctx.clock())
    except SubscriberError as exc:
        raise LinkNotValid(str(exc).capitalize() + ".") from None
    cookie, csrf = csrf_pair(request, ctx)
    page = ctx.page(request, "confirm.html", token=token, email=masked(email), csrf_field=CSRF_FIELD, csrf_token=csrf)
    return with_csrf_cookie(page, ctx, cookie)


def _send_welcome(ctx: WebContext, subscriber_id: int) -> None:
    """After the confirmation's answer: the welcome mail, once. A failure is recorded
    and logged (``newsletter welcome retry`` sends it again); the subscription stands."""
    try:
        with ctx.sender() as sender:
            sent = welcome.send_welcome(ctx.engine, ctx.settings, sender, subscriber_id, now=ctx.clock())
    except NewsletterError as exc:
        log.error("event=welcome_failed subscriber=%d error=%s", subscriber_id, type(exc).__name__)
    except Exception:
        log.exception("event=welcome_failed subscriber=%d", subscriber_id)
    else:
        log.info("event=welcome_%s subscriber=%d", "sent" if sent else "not_sent", subscriber_id)


@router.post("/confirm/{token}", response_class=HTMLResponse, summary="Confirm a sign-up")
def confirm(
    token: str,
    request: Request,
    background: BackgroundTasks,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """The confirmation page's button (CSRF-protected, like every form of ours)."""
    ctx = context(request)
    check_csrf(request, ctx, csrf_token)
    try:
        confirmed = subscribers.confirm(ctx.engine, link_token(token, "confirmation"), now=ctx.clock())
    except SubscriberError as exc:
        raise LinkNotValid(str(exc).capitalize() + ".") from None
    log.info("event=confirmed via=web")
    if ctx.settings.welcome.enabled:
        background.add_task(_send_welcome, ctx, confirmed.id)
    return ctx.page(request, "confirmed.html", archive_url="/archive")


# --- archive ---------------------------------------------------------------------------


@router.get("/archive", response_class=HTMLResponse, summary="Past issues")
def archive(request: Request) -> Response:
    ctx = context(request)
    return ctx.page(
        request, "archive.html", issues=sent_issues(ctx.settings), feed_url=links.feed(ctx.settings.publication)
    )


@router.get("/archive/{slug}", response_class=HTMLResponse, summary="An issue's web version")
def archive_issue(slug: str, request: Request) -> Response:
    """The "View in browser" page: the email as sent, with nobody's personal links."""
    ctx = context(request)
    path, issue = find_issue(ctx.settings, slug)
    if issue.status != "sent":
        raise NotFound("There is no issue at this address.")
    html = web_version(ctx.settings, request.app.state.builds.build(path, issue))
    html = feed.with_share_tags(html, feed.share_tags(ctx.settings, issue))
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": EMAIL_POLICY,
            "X-Frame-Options": "SAMEORIGIN",
            "Cache-Control": "public, max-age=300",
        },
    )
