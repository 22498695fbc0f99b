"""The editors' reports (same credentials as the preview): ``/reports`` compares the
last issues sent, ``/reports/{slug}`` is one issue's report with its hourly chart."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from newsletter import chart, report
from newsletter.web.context import context
from newsletter.web.preview import require_editor

router = APIRouter(prefix="/reports", dependencies=[Depends(require_editor)])


@router.get("", response_class=HTMLResponse, summary="The last issues compared")
async def report_list(request: Request) -> Response:
    ctx = context(request)
    rows = await run_in_threadpool(report.compare_issues, ctx.engine)
    return ctx.page(request, "report_list.html", rows=rows)


@router.get("/{slug}", response_class=HTMLResponse, summary="One issue's report")
async def issue_report(slug: str, request: Request) -> Response:
    ctx = context(request)
    found = await run_in_threadpool(report.issue_report, ctx.engine, slug)
    svg = Markup(chart.hours_svg(found.hours, f"Opens and clicks per hour after sending {found.issue}"))
    return ctx.page(
        request, "report_issue.html", report=found, rates=found.rates, chart=svg, caveat=report.OPENS_CAVEAT
    )
