"""The readers' preferences page, behind the token of their unsubscribe link: change
their name, pause delivery for 1-8 weeks (or resume), unsubscribe, download everything
stored about them (JSON) and erase themselves (the address stays suppressed, so no
import brings it back). Every action is a CSRF-protected POST, rate-limited per client
like the sign-up form, and logged by subscriber id, never by token.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from newsletter.errors import SubscriberError
from newsletter.store import preferences, subscribers
from newsletter.store.tables import OPTED_OUT
from newsletter.web.context import WebContext, context
from newsletter.web.problems import BadRequest, LinkNotValid, TooManyRequests
from newsletter.web.public import check_csrf, client_address, csrf_pair, link_token, masked, with_csrf_cookie
from newsletter.web.security import CSRF_FIELD

log = logging.getLogger("newsletter.web")
router = APIRouter()

PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
CsrfField = Annotated[str, Form(max_length=200)]


def _reader(ctx: WebContext, token: str) -> subscribers.Subscriber:
    found = subscribers.get_by_token(ctx.engine, link_token(token, "preferences"))
    if found is None:
        raise LinkNotValid("This preferences link is not valid.")
    return found


def _page(request: Request, ctx: WebContext, token: str, *, status: int = 200, **values: Any) -> Response:
    """The preferences page for whoever holds ``token``, with a message from the last action."""
    found = _reader(ctx, token)
    cookie, csrf = csrf_pair(request, ctx)
    paused = preferences.paused_until(ctx.engine, found.id)
    now = ctx.clock()
    page = ctx.page(
        request,
        "preferences.html",
        status=status,
        token=token,
        email=masked(found.email),
        name=found.name,
        subscribed=found.status == "active",
        opted_out=found.status in OPTED_OUT,
        paused_until=paused if paused is not None and paused > now else None,
        weeks=list(preferences.PAUSE_WEEKS),
        csrf_field=CSRF_FIELD,
        csrf_token=csrf,
        result=values.pop("result", None),
        error=values.pop("error", None),
        **values,
    )
    page.headers.update(PRIVATE)
    return with_csrf_cookie(page, ctx, cookie)


def _action(request: Request, ctx: WebContext, token: str, csrf_token: str) -> subscribers.Subscriber:
    """What every action checks first: the form came from our page, the client is within
    its rate, the token is valid."""
    check_csrf(request, ctx, csrf_token)
    wait = ctx.actions.hit(client_address(request), ctx.clock().timestamp())
    if wait is not None:
        raise TooManyRequests("Too many changes from your network. Please try again later.", wait)
    return _reader(ctx, token)


@router.get("/preferences/{token}", response_class=HTMLResponse, summary="A reader's preferences page")
def preferences_page(token: str, request: Request) -> Response:
    ctx = context(request)
    return _page(request, ctx, token)


@router.post("/preferences/{token}/name", response_class=HTMLResponse, summary="Change the reader's name")
def change_name(
    token: str, request: Request, name: Annotated[str, Form(max_length=400)] = "", csrf_token: CsrfField = ""
) -> Response:
    ctx = context(request)
    found = _action(request, ctx, token, csrf_token)
    try:
        preferences.rename(ctx.engine, found.token, name, now=ctx.clock())
    except SubscriberError as exc:
        return _page(request, ctx, token, status=400, error=f"Your name was not changed: {exc}.")
    log.info("event=preferences action=name subscriber=%d", found.id)
    return _page(request, ctx, token, result="Your name is saved.")


@router.post("/preferences/{token}/pause", response_class=HTMLResponse, summary="Pause delivery for 1-8 weeks")
def pause(
    token: str, request: Request, weeks: Annotated[str, Form(max_length=4)], csrf_token: CsrfField = ""
) -> Response:
    ctx = context(request)
    found = _action(request, ctx, token, csrf_token)
    try:
        count = int(weeks)
    except ValueError:
        raise BadRequest("weeks must be a whole number from 1 to 8") from None
    if count not in preferences.PAUSE_WEEKS:
        raise BadRequest("weeks must be a whole number from 1 to 8")
    try:
        until = preferences.pause(ctx.engine, found.token, count, now=ctx.clock())
    except SubscriberError as exc:
        return _page(request, ctx, token, status=409, error=f"{str(exc).capitalize()}.")
    log.info("event=preferences action=pause weeks=%d subscriber=%d", count, found.id)
    return _page(request, ctx, token, result=f"Delivery is paused until {until:%B} {until.day}, {until.year}.")


@router.post("/preferences/{token}/resume", response_class=HTMLResponse, summary="End a pause now")
def resume(token: str, request: Request, csrf_token: CsrfField = "") -> Response:
    ctx = context(request)
    found = _action(request, ctx, token, csrf_token)
    preferences.resume(ctx.engine, found.token, now=ctx.clock())
    log.info("event=preferences action=resume subscriber=%d", found.id)
    return _page(request, ctx, token, result="Delivery is resumed: the next issue comes to you.")


@router.post("/preferences/{token}/unsubscribe", response_class=HTMLResponse, summary="Unsubscribe")
def unsubscribe(token: str, request: Request, csrf_token: CsrfField = "") -> Response:
    ctx = context(request)
    found = _action(request, ctx, token, csrf_token)
    subscribers.unsubscribe_by_token(ctx.engine, found.token, now=ctx.clock())
    log.info("event=unsubscribed via=preferences subscriber=%d", found.id)
    return _page(request, ctx, token, result="You are unsubscribed.")


@router.post("/preferences/{token}/export", summary="Download everything stored about the reader (JSON)")
def export(token: str, request: Request, csrf_token: CsrfField = "") -> Response:
    ctx = context(request)
    found = _action(request, ctx, token, csrf_token)
    data = preferences.export_subscriber(ctx.engine, found.id)
    data["exported_at"] = ctx.clock().isoformat()
    data["publication"] = ctx.settings.publication.name
    log.info("event=preferences action=export subscriber=%d", found.id)
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False),
        media_type="application/json; charset=utf-8",
        headers={**PRIVATE, "Content-Disposition": 'attachment; filename="my-newsletter-data.json"'},
    )


@router.post("/preferences/{token}/erase", response_class=HTMLResponse, summary="Erase the reader")
def erase(
    token: str, request: Request, confirm: Annotated[str, Form(max_length=10)] = "", csrf_token: CsrfField = ""
) -> Response:
    ctx = context(request)
    found = _action(request, ctx, token, csrf_token)
    if confirm != "yes":
        return _page(request, ctx, token, status=400, error="Tick the box to confirm that you want to be erased.")
    subscribers.remove(ctx.engine, found.email, now=ctx.clock())
    log.info("event=preferences action=erase subscriber=%d", found.id)
    page = ctx.page(request, "erased.html", subscribe_url="/subscribe")
    page.headers.update(PRIVATE)
    return page
