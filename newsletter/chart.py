"""The report's chart of opens and clicks per hour, as a server-rendered SVG (no
JavaScript): two polylines over the first 72 hours, with labelled axes and a title
and description for screen readers."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Final

from newsletter.report import Hour

WIDTH: Final = 720
HEIGHT: Final = 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 16, 36
SERIES: Final = (("opens", "#1f6feb"), ("clicks", "#d9480f"))


def _nice_max(value: int) -> int:
    if value <= 5:
        return 5
    step = int(10 ** (len(str(value)) - 1))
    return ((value + step - 1) // step) * step


def hours_svg(hours: Sequence[Hour], title: str) -> str:
    """The SVG of ``hours`` (opens and clicks per hour since the send started)."""
    top = _nice_max(max((max(h.opens, h.clicks) for h in hours), default=0))
    span = max(len(hours) - 1, 1)
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def x(i: int) -> float:
        return _LEFT + plot_w * i / span

    def y(v: int) -> float:
        return _TOP + plot_h * (1 - v / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-title chart-desc" class="hours-chart">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<desc id="chart-desc">Opens {sum(h.opens for h in hours):,} and clicks '
        f"{sum(h.clicks for h in hours):,} per hour over the first {len(hours)} hours.</desc>",
    ]
    for fraction in (0, 0.5, 1):
        value = round(top * fraction)
        parts.append(
            f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#ddd" />'
            f'<text x="{_LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11">{value:,}</text>'
        )
    for h in range(0, len(hours) + 1, 12):
        parts.append(
            f'<text x="{x(min(h, span)):.1f}" y="{HEIGHT - _BOTTOM + 16}" text-anchor="middle" '
            f'font-size="11">{h} h</text>'
        )
    for name, color in SERIES:
        points = " ".join(f"{x(i):.1f},{y(getattr(h, name)):.1f}" for i, h in enumerate(hours))
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"><title>{name}</title></polyline>'
        )
    for i, (name, color) in enumerate(SERIES):
        lx = _LEFT + 8 + i * 90
        parts.append(
            f'<rect x="{lx}" y="{HEIGHT - 14}" width="12" height="4" fill="{color}" />'
            f'<text x="{lx + 16}" y="{HEIGHT - 9}" font-size="11">{name}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
