"""The render check: the built email opened the way a reader's client shows it, in headless
Chromium (Debian's ``chromium``, driven by Playwright) at 375 and 600 px, light and dark.
It measures horizontal overflow, the smallest font, text contrast (WCAG AA) and tap
targets, runs axe-core, adds the email-client compatibility report (``compat``), writes
a screenshot of each render and records the report next to them as ``check.json``.

Errors (overflow, contrast below AA, serious or critical axe violations, quirks mode,
content that a client cannot show) stop a send like the build's own checks; warnings
(small fonts and tap targets, minor axe findings, image widths, features without a known
fallback) are listed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from newsletter import compat
from newsletter.browser import CHROMIUM, WIDTHS, Browser, RawRender, Scheme
from newsletter.render import Check
from newsletter.yamlfile import atomic_write

REPORT_NAME = "check.json"
MIN_TARGET_PX = 24  # WCAG 2.2 success criterion 2.5.8 (target size, minimum)
MIN_FONT_PX = 12
SERIOUS = ("serious", "critical")
# Bumped when the check itself changes, so a recorded report is not reused.
CHECK_VERSION = 1


@dataclass(frozen=True)
class AxeViolation:
    rule: str
    impact: str
    help: str
    nodes: int


@dataclass(frozen=True)
class Render:
    """What one render (a width and a colour scheme) showed."""

    width: int
    scheme: Scheme
    screenshot: str  # file name in the build folder
    overflow_px: int
    smallest_font_px: float
    smallest_font_text: str
    low_contrast: list[dict[str, Any]]
    small_targets: list[dict[str, Any]]
    images: list[dict[str, Any]]
    axe: list[AxeViolation]
    quirks_mode: bool

    @property
    def name(self) -> str:
        return f"{self.width} px, {self.scheme}"


@dataclass(frozen=True)
class RenderReport:
    """The render check of one built email. ``skipped`` says why no browser ran."""

    html_sha256: str
    renders: list[Render] = field(default_factory=list)
    compat: list[compat.ClientNote] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0

    @property
    def errors(self) -> list[str]:
        return [c.message for c in self.checks if c.level == "error"]

    @property
    def warnings(self) -> list[str]:
        return [c.message for c in self.checks if c.level == "warning"]

    def to_json(self) -> str:
        return json.dumps({"version": CHECK_VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> RenderReport | None:
        """A recorded report, or None when it is unreadable or from another version."""
        try:
            data = json.loads(text)
            if data.pop("version", None) != CHECK_VERSION:
                return None
            return cls(
                html_sha256=data["html_sha256"],
                renders=[Render(**{**r, "axe": [AxeViolation(**v) for v in r["axe"]]}) for r in data["renders"]],
                compat=[compat.ClientNote(**n) for n in data["compat"]],
                checks=[Check(**c) for c in data["checks"]],
                skipped=data["skipped"],
                seconds=data["seconds"],
            )
        except (ValueError, KeyError, TypeError):
            return None


def html_sha256(html: str) -> str:
    return hashlib.sha256(html.encode("utf-8")).hexdigest()


def chromium_missing(chromium: Path = CHROMIUM) -> str | None:
    """Why the browser check cannot run here, or None when it can."""
    if not chromium.exists() and not shutil.which(str(chromium)):
        return f"render check skipped: {chromium} is not installed (apt-get install chromium)"
    try:
        import axe_playwright_python  # noqa: F401
        import playwright  # noqa: F401
    except ImportError:
        return "render check skipped: playwright or axe-playwright-python is not installed (pip install -e .)"
    return None


def run_check(html: str, out_dir: Path, chromium: Path = CHROMIUM, browser: Browser | None = None) -> RenderReport:
    """Render ``html`` four times, write the screenshots and ``check.json`` into
    ``out_dir`` and return the report. Without Chromium the report says it was skipped
    and carries the compatibility report only. ``browser``: one already started (see
    ``Browser``); else one is started here."""
    started = time.perf_counter()
    digest = html_sha256(html)
    notes: list[compat.ClientNote] = []

    def compatibility() -> None:  # needs no browser: done while the pages work
        notes.extend(compat.report(html))

    missing = chromium_missing(chromium)
    if missing:
        compatibility()
        return RenderReport(html_sha256=digest, compat=notes, checks=compat.checks(notes), skipped=missing)
    if browser is None:
        with Browser(chromium) as started_here:
            raw = started_here.renders(html, out_dir, compatibility)
    else:
        raw = browser.renders(html, out_dir, compatibility)
    checks = compat.checks(notes)
    renders = [_render(r) for r in raw]
    checks = _render_checks(renders) + checks
    report = RenderReport(
        html_sha256=digest,
        renders=renders,
        compat=notes,
        checks=checks,
        seconds=round(time.perf_counter() - started, 2),
    )
    atomic_write(out_dir / REPORT_NAME, report.to_json().encode("utf-8"))
    return report


def recorded(out_dir: Path, html: str) -> RenderReport | None:
    """The report recorded in ``out_dir`` for exactly this HTML, if there is one."""
    try:
        report = RenderReport.from_json((out_dir / REPORT_NAME).read_text(encoding="utf-8"))
    except OSError:
        return None
    return report if report is not None and report.html_sha256 == html_sha256(html) else None


def _render(raw: RawRender) -> Render:
    measured, axe = raw.measured, raw.axe
    smallest = measured.get("smallest") or {"size": 0.0, "text": ""}
    return Render(
        width=raw.width,
        scheme=raw.scheme,
        screenshot=raw.screenshot,
        overflow_px=max(0, int(measured["overflow"])),
        smallest_font_px=float(smallest["size"]),
        smallest_font_text=str(smallest["text"]),
        low_contrast=[t for t in measured["texts"] if t["ratio"] < t["needed"]],
        small_targets=list(measured["targets"]),
        images=list(measured["images"]),
        axe=[
            AxeViolation(rule=v["id"], impact=v.get("impact") or "minor", help=v["help"], nodes=len(v["nodes"]))
            for v in axe["violations"]
        ],
        quirks_mode=measured["compat_mode"] != "CSS1Compat",
    )


def _render_checks(renders: list[Render]) -> list[Check]:
    checks: list[Check] = []
    for r in renders:
        where = f"render check ({r.name})"
        if r.quirks_mode:
            checks.append(Check("error", f"{where}: no <!doctype html>: the email renders in quirks mode"))
        if r.width == min(WIDTHS) and r.overflow_px:
            checks.append(
                Check("error", f"{where}: {r.overflow_px} px of horizontal overflow: readers must scroll sideways")
            )
        for t in r.low_contrast[:3]:
            checks.append(
                Check(
                    "error",
                    f"{where}: contrast {t['ratio']}:1 (AA needs {t['needed']}:1) for "
                    f"{t['text']!r} ({t['color']} on {t['background']})",
                )
            )
        if len(r.low_contrast) > 3:
            checks.append(Check("error", f"{where}: and {len(r.low_contrast) - 3} more texts below AA contrast"))
        for v in r.axe:
            level: Literal["error", "warning"] = "error" if v.impact in SERIOUS else "warning"
            checks.append(
                Check(
                    level,
                    f"{where}: axe {v.impact} {v.rule}: {v.help} ({v.nodes} element{'s' if v.nodes != 1 else ''})",
                )
            )
        if r.smallest_font_px < MIN_FONT_PX:
            checks.append(
                Check("warning", f"{where}: smallest text is {r.smallest_font_px:g} px: {r.smallest_font_text!r}")
            )
        for t in r.small_targets:
            checks.append(
                Check(
                    "warning",
                    f"{where}: tap target {t['width']}x{t['height']} px, under "
                    f"{MIN_TARGET_PX}x{MIN_TARGET_PX}: {t['text']!r}",
                )
            )
        for img in r.images if r.width == max(WIDTHS) else []:
            if img["attribute"] and img["attribute"] != str(img["rendered"]):
                checks.append(
                    Check(
                        "warning",
                        f'{where}: image width="{img["attribute"]}" but shown '
                        f"{img['rendered']} px wide (Outlook uses the attribute): {img['src']}",
                    )
                )
    return _dedupe(checks)


def _dedupe(checks: list[Check]) -> list[Check]:
    """One line per finding even when several renders show it (named by the first)."""
    seen: set[tuple[str, str]] = set()
    out: list[Check] = []
    for c in checks:
        key = (c.level, c.message.split("): ", 1)[-1])
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def check_html(
    html: str,
    out_dir: Path,
    chromium: Path,
    mode: Literal["auto", "required", "off"],
    browser: Browser | None = None,
    *,
    reuse: bool = True,
) -> RenderReport:
    """The render check as build and send run it (``render_check.on_build``/``on_send``):
    a report recorded for exactly this HTML is reused; ``required`` without Chromium is
    an error, ``auto`` gives a skipped report, ``off`` a skipped report at once."""
    from newsletter.errors import BuildError

    if mode == "off":
        return RenderReport(html_sha256=html_sha256(html), skipped="render check off (render_check in config)")
    found = recorded(out_dir, html) if reuse else None
    if found is not None:
        return found
    missing = chromium_missing(chromium)
    if missing and mode == "required":
        raise BuildError(f"{missing.replace('skipped', 'required')} (render_check says required)")
    return run_check(html, out_dir, chromium, browser)


def summary(report: RenderReport) -> list[str]:
    """The report as short lines for a terminal: one per render, one per client."""
    lines: list[str] = []
    for r in report.renders:
        serious = sum(1 for v in r.axe if v.impact in SERIOUS)
        lines.append(
            f"{r.width} px {r.scheme}: overflow {r.overflow_px} px, smallest text {r.smallest_font_px:g} px, "
            f"{len(r.low_contrast)} below AA contrast, {len(r.small_targets)} small tap targets, "
            f"axe {serious} serious/critical of {len(r.axe)}; {r.screenshot}"
        )
    by_client: dict[str, list[compat.ClientNote]] = {}
    for n in report.compat:
        by_client.setdefault(n.client, []).append(n)
    for client, notes in by_client.items():
        unsupported = [f"{n.title} ({n.fallback or 'check by hand'})" for n in notes if n.support == "unsupported"]
        partial = sum(1 for n in notes if n.support == "partial")
        lines.append(
            f"{client}: "
            + ("; ".join(unsupported) if unsupported else "nothing unsupported")
            + f"; {partial} partly supported"
        )
    return lines


@dataclass(frozen=True)
class CheckOutput:
    """What ``check_issue`` did: the build (files, warnings) and the render check."""

    build: Any  # render.BuildOutput
    report: RenderReport


def sample_html(build: Any, settings: Any) -> str:
    """The HTML part as the sample recipient gets it (what the browser opens)."""
    from newsletter import render

    html, _text = render.personalize_parts(build.built.email, render.sample_recipient(settings))
    return html


def check_issue(
    issue_path: Path,
    settings: Any,
    out_dir: Path,
    mode: Literal["auto", "required", "off"] = "auto",
    *,
    browser: Browser | None = None,
    reuse: bool = True,
) -> CheckOutput:
    """Build ``issue_path`` into ``out_dir`` and run the render check on it. ``browser``:
    one started early (its driver at least, see ``Browser``; the caller closes it),
    launched here unless the recorded report is newer than everything the build reads
    (then it is most likely reused); ``reuse``: whether a report recorded for the same
    HTML is reused (else the check runs again)."""
    from newsletter import render

    chromium = settings.render_check.chromium
    if (
        browser is not None
        and mode != "off"
        and chromium_missing(chromium) is None
        and not (reuse and _probably_recorded(out_dir, issue_path, settings))
    ):
        browser.launch(chromium)
    else:
        browser = None
    build = render.build_to_dir(issue_path, settings, out_dir)
    report = check_html(sample_html(build, settings), out_dir, chromium, mode, browser, reuse=reuse)
    return CheckOutput(build=build, report=report)


def _probably_recorded(out_dir: Path, issue_path: Path, settings: Any) -> bool:
    """Whether ``check.json`` is newer than the issue file, the templates and the
    configuration (a guess: the HTML's digest decides whether it is reused)."""
    try:
        recorded_at = (out_dir / REPORT_NAME).stat().st_mtime
        inputs = [issue_path, settings.config_path, *Path(settings.templates.dir).rglob("*")]
        return all(path.stat().st_mtime < recorded_at for path in inputs if path is not None)
    except OSError:
        return False
