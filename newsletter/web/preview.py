"""The editors' preview: the list of issues, and one issue in a desktop and a 375 px
mobile frame, its plain text, its size against Gmail's clipping limit, the build's
checks and the render check (its report and four screenshots side by side, when one is
recorded for this exact HTML; a button runs it), with "send test" and "approve". The
page reloads itself when the issue file or a template changes: it waits on ``changes``
(a long poll, answered within ``WATCH_INTERVAL`` of the change) and falls back to polling
``version`` when that fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from newsletter import browser, issuefile, rendercheck, send
from newsletter.errors import NewsletterError, StoreError
from newsletter.models import Issue
from newsletter.store import events
from newsletter.web.context import WebContext, context
from newsletter.web.issues import find_issue, fingerprint, issue_path, sample_parts
from newsletter.web.public import EMAIL_POLICY, check_csrf, csrf_pair, with_csrf_cookie
from newsletter.web.security import CSRF_FIELD, EditorRequest, is_forwarded

log = logging.getLogger("newsletter.web")

View = Literal["both", "desktop", "mobile", "text"]
NOTICES = {
    "test-sent": "Test sent to {recipients}.",
    "approved": "Approved: the send job will send it.",
    "checked": "Render check done.",
}
SCREENSHOTS = {browser.screenshot_name(w, s): (w, s) for s in browser.SCHEMES for w in browser.WIDTHS}
MOBILE_WIDTH = 375
POLL_MS = 500  # the fallback's interval
# How often a waiting ``changes`` request looks at the files (a few stat calls), and how
# long it waits before answering "unchanged" (shorter than a proxy's idle timeout).
WATCH_INTERVAL = 0.025
WATCH_SECONDS = 20.0


def require_editor(request: Request) -> None:
    # ``local`` mode allows no trusted proxy, so when it matters this is the connection's own peer
    peer = request.scope.get("client") or ("", 0)
    context(request).editors.check(
        EditorRequest(
            host=request.headers.get("host", ""),
            authorization=request.headers.get("authorization"),
            peer=str(peer[0]),
            forwarded=is_forwarded(request.headers.keys()),
        )
    )


router = APIRouter(prefix="/preview", dependencies=[Depends(require_editor)])


@router.get("", response_class=HTMLResponse, summary="Issues to preview")
def issue_list(request: Request) -> Response:
    ctx = context(request)
    rows = []
    for path, loaded in issuefile.list_issues(ctx.settings.issues_dir):
        if isinstance(loaded, Issue):
            rows.append(
                {
                    "slug": loaded.slug,
                    "date": loaded.date,
                    "subject": loaded.subject,
                    "status": loaded.status,
                    "error": None,
                    "file": path.name,
                }
            )
        else:
            rows.append(
                {
                    "slug": None,
                    "date": None,
                    "subject": None,
                    "status": "invalid",
                    "error": str(loaded),
                    "file": path.name,
                }
            )
    return ctx.page(request, "preview_list.html", rows=rows)


def _stats(ctx: WebContext, issue: Issue) -> events.IssueStats | None:
    if issue.status != "sent":
        return None
    try:
        return events.issue_stats(ctx.engine, issue.slug)
    except StoreError:
        return None


@router.get("/{slug}", response_class=HTMLResponse, summary="Preview one issue")
def issue_page(
    slug: str,
    request: Request,
    view: Annotated[View, Query()] = "both",
    notice: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    ctx = context(request)
    path = issue_path(ctx.settings, slug)
    cookie, token = csrf_pair(request, ctx)
    recipients = ctx.settings.delivery.test_recipients
    values: dict[str, Any] = {
        "slug": slug,
        "file": path.name,
        "view": view,
        "mobile_width": MOBILE_WIDTH,
        "poll_ms": POLL_MS,
        "changes_url": f"/preview/{slug}/changes",
        "version": fingerprint(ctx.settings, path),
        "csrf_field": CSRF_FIELD,
        "csrf_token": token,
        "limits": ctx.settings.limits,
        "test_recipients": recipients,
        "notice": NOTICES.get(notice or "", "").format(recipients=", ".join(recipients)) or None,
    }
    try:
        issue = issuefile.load(path)
        built = request.app.state.builds.build(path, issue)
    except NewsletterError as exc:  # the file or a template is broken: show it, keep reloading
        page = ctx.page(
            request,
            "preview_issue.html",
            status=exc.status,
            issue=None,
            built=None,
            text="",
            build_error=str(exc),
            stats=None,
            render_report=None,
            chromium_missing=None,
            screenshots=SCREENSHOTS,
            **values,
        )
        return with_csrf_cookie(page, ctx, cookie)
    html, text = sample_parts(ctx.settings, built)
    page = ctx.page(
        request,
        "preview_issue.html",
        issue=issue,
        built=built,
        text=text,
        build_error=None,
        stats=_stats(ctx, issue),
        render_report=rendercheck.recorded(ctx.settings.output.dir, html),
        chromium_missing=rendercheck.chromium_missing(ctx.settings.render_check.chromium),
        screenshots=SCREENSHOTS,
        **values,
    )
    return with_csrf_cookie(page, ctx, cookie)


@router.get("/{slug}/email.html", response_class=HTMLResponse, summary="The rendered HTML part")
def issue_html(slug: str, request: Request) -> Response:
    ctx = context(request)
    path, issue = find_issue(ctx.settings, slug)
    html, _text = sample_parts(ctx.settings, request.app.state.builds.build(path, issue))
    return HTMLResponse(html, headers={"Content-Security-Policy": EMAIL_POLICY, "X-Frame-Options": "SAMEORIGIN"})


@router.get("/{slug}/email.txt", response_class=PlainTextResponse, summary="The plain-text part")
def issue_text(slug: str, request: Request) -> Response:
    ctx = context(request)
    path, issue = find_issue(ctx.settings, slug)
    _html, text = sample_parts(ctx.settings, request.app.state.builds.build(path, issue))
    return PlainTextResponse(text)


@router.get("/{slug}/check/{name}", summary="A screenshot of the render check")
def issue_screenshot(slug: str, name: str, request: Request) -> Response:
    ctx = context(request)
    if name not in SCREENSHOTS:
        return PlainTextResponse("no such screenshot", status_code=404)
    path = ctx.settings.output.dir / name
    if not path.is_file():
        return PlainTextResponse("no render check has run: press Run render check", status_code=404)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.post("/{slug}/check", summary="Run the render check on the issue as it is now")
def issue_check(slug: str, request: Request, csrf_token: Annotated[str, Form(max_length=200)] = "") -> Response:
    ctx = context(request)
    check_csrf(request, ctx, csrf_token)
    path, issue = find_issue(ctx.settings, slug)
    html, _text = sample_parts(ctx.settings, request.app.state.builds.build(path, issue))
    report = rendercheck.check_html(html, ctx.settings.output.dir, ctx.settings.render_check.chromium, "required")
    log.info("event=render_checked issue=%s errors=%d seconds=%.1f", slug, len(report.errors), report.seconds)
    return RedirectResponse(f"/preview/{slug}?notice=checked", status_code=303)


@router.get("/{slug}/version", summary="Changes when the issue file or a template changes")
def issue_version(slug: str, request: Request) -> JSONResponse:
    """What the preview page polls; it does not read the issue, so a half-saved file
    still reloads the page (which then shows the error)."""
    ctx = context(request)
    return JSONResponse({"version": fingerprint(ctx.settings, issue_path(ctx.settings, slug))})


@router.get("/{slug}/changes", summary="Answers when the issue file or a template changes")
async def issue_changes(
    slug: str, request: Request, since: Annotated[str, Query(max_length=200)] = "", wait: float = WATCH_SECONDS
) -> JSONResponse:
    """A long poll: the fingerprint ``version`` gives, as soon as it differs from
    ``since`` or after ``wait`` seconds (at most ``WATCH_SECONDS``) with it unchanged."""
    ctx = context(request)
    # off the event loop: a slug that is not its file's name reads every issue file
    path = await run_in_threadpool(issue_path, ctx.settings, slug)
    deadline = time.monotonic() + min(max(wait, 0.0), WATCH_SECONDS)
    version = fingerprint(ctx.settings, path)
    while version == since and time.monotonic() < deadline:
        if await request.is_disconnected():  # the tab was closed or reloaded
            break
        await asyncio.sleep(WATCH_INTERVAL)
        version = fingerprint(ctx.settings, path)
    return JSONResponse({"version": version}, headers={"Cache-Control": "no-store"})


@router.post("/{slug}/send-test", summary="Send a test to delivery.test_recipients")
def issue_send_test(slug: str, request: Request, csrf_token: Annotated[str, Form(max_length=200)] = "") -> Response:
    ctx = context(request)
    check_csrf(request, ctx, csrf_token)
    path, _issue = find_issue(ctx.settings, slug)
    with ctx.sender() as sender:
        sent = send.send_test(ctx.settings, path, None, sender=sender)
    log.info("event=test_sent issue=%s recipients=%d", slug, len(sent))
    return RedirectResponse(f"/preview/{slug}?notice=test-sent", status_code=303)


@router.post("/{slug}/approve", summary="Approve the issue for sending")
def issue_approve(slug: str, request: Request, csrf_token: Annotated[str, Form(max_length=200)] = "") -> Response:
    ctx = context(request)
    check_csrf(request, ctx, csrf_token)
    path, _issue = find_issue(ctx.settings, slug)
    send.approve(path, now=ctx.clock())
    log.info("event=approved issue=%s", slug)
    return RedirectResponse(f"/preview/{slug}?notice=approved", status_code=303)
