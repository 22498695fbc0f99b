"""The project's own click redirect and open pixel (SMTP and outbox sends; see
newsletter/tracking.py): ``/r/<link>[/<reader>]`` leads only to a link of a sent issue,
``/o/<issue>[/<reader>].gif`` answers a 1x1 GIF; a bad or unknown token is a 404."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from newsletter import tracking
from newsletter.tracking import LinkNotTracked
from newsletter.web.context import context

log = logging.getLogger("newsletter.web")
router = APIRouter()
_NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}


async def _click(request: Request, token: str, reader: str | None) -> Response:
    ctx = context(request)
    hit = await run_in_threadpool(tracking.click, ctx.engine, token, reader)
    await run_in_threadpool(tracking.record_hit, ctx.engine, hit, ctx.clock())
    assert hit.url is not None
    return RedirectResponse(hit.url, status_code=302, headers=_NO_STORE)


@router.get("/r/{token}", summary="A tracked link (aggregate)", include_in_schema=False)
async def click(request: Request, token: str) -> Response:
    return await _click(request, token, None)


@router.get("/r/{token}/{reader}", summary="A tracked link (per subscriber)", include_in_schema=False)
async def click_by_reader(request: Request, token: str, reader: str) -> Response:
    return await _click(request, token, reader)


@router.get("/o/{name}", summary="The open pixel", include_in_schema=False)
@router.get("/o/{token}/{name}", summary="The open pixel (per subscriber)", include_in_schema=False)
async def pixel(request: Request, name: str, token: str | None = None) -> Response:
    if not name.endswith(".gif"):
        raise LinkNotTracked("not a pixel")
    ctx = context(request)
    issue_token, reader = (token, name[:-4]) if token is not None else (name[:-4], None)
    hit = await run_in_threadpool(tracking.opened, ctx.engine, issue_token, reader)
    await run_in_threadpool(tracking.record_hit, ctx.engine, hit, ctx.clock())
    return Response(tracking.PIXEL, media_type="image/gif", headers=_NO_STORE)
