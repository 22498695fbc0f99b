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

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from newsletter import compat
from newsletter.render import Check
from newsletter.yamlfile import atomic_write

Scheme = Literal["light", "dark"]
WIDTHS = (375, 600)
SCHEMES: tuple[Scheme, ...] = ("light", "dark")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPORT_NAME = "check.json"
MIN_TARGET_PX = 24  # WCAG 2.2 success criterion 2.5.8 (target size, minimum)
MIN_FONT_PX = 12
SERIOUS = ("serious", "critical")
# The DOM is the same in every render; only the width and the colour scheme change. So
# the rules whose outcome does not depend on layout or colours run once, shared out
# between the first light and the first dark render, and every render runs the others.
LAYOUT_RULES = ["color-contrast", "target-size", "link-in-text-block", "scrollable-region-focusable"]
# Not applicable to an email, which a client shows inside its own page and landmarks.
AXE_RULES_OFF = {"region": {"enabled": False}, "landmark-one-main": {"enabled": False}}
ALL_AXE_RULES: dict[str, Any] = {"resultTypes": ["violations"], "rules": AXE_RULES_OFF}
LAYOUT_AXE_RULES: dict[str, Any] = {"resultTypes": ["violations"], "runOnly": {"type": "rule", "values": LAYOUT_RULES}}
# Bumped when the check itself changes, so a recorded report is not reused.
CHECK_VERSION = 1

# Remote images are never fetched: each is a neutral 3:2 placeholder, shown at the
# image's own width, so the layout is close to the one readers get, offline.
_PLACEHOLDER = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="1200" height="800" viewBox="0 0 1200 800">'
    '<rect width="1200" height="800" fill="#b9b4aa"/></svg>'
)

# Runs in the page: every measurement of one render, in one round trip.
_MEASURE = r"""() => {
  const parse = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null;
    const p = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const lum = (rgb) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(rgb[0]) + 0.7152 * f(rgb[1]) + 0.0722 * f(rgb[2]); };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0.5) return c;
    }
    return matchMedia('(prefers-color-scheme: dark)').matches && getComputedStyle(document.documentElement).colorScheme.includes('dark')
      ? [18, 18, 18, 1] : [255, 255, 255, 1];
  };
  const visible = (el) => { const r = el.getClientRects(); const s = getComputedStyle(el);
    return r.length > 0 && s.visibility !== 'hidden' && s.display !== 'none' && parseFloat(s.opacity) > 0.1; };
  const label = (el) => (el.textContent || el.getAttribute('alt') || '').replace(/\s+/g, ' ').trim().slice(0, 50);
  const texts = []; let smallest = null;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  while (walker.nextNode()) {
    const node = walker.currentNode; const el = node.parentElement;
    if (!el || seen.has(el) || !node.textContent.trim() || !visible(el)) continue;
    seen.add(el);
    const s = getComputedStyle(el); const size = parseFloat(s.fontSize);
    const bold = parseInt(s.fontWeight, 10) >= 700;
    const fg = parse(s.color); const bg = background(el);
    const L1 = lum(fg), L2 = lum(bg);
    const ratio = (Math.max(L1, L2) + 0.05) / (Math.min(L1, L2) + 0.05);
    const large = size >= 24 || (bold && size >= 18.66);
    if (smallest === null || size < smallest.size) smallest = {size, text: node.textContent.trim().slice(0, 50)};
    texts.push({text: node.textContent.replace(/\s+/g, ' ').trim().slice(0, 50), size, ratio: Math.round(ratio * 100) / 100,
                needed: large ? 3 : 4.5, color: s.color, background: `rgb(${bg[0]}, ${bg[1]}, ${bg[2]})`});
  }
  const targets = [];
  for (const a of document.querySelectorAll('a[href]')) {
    if (!visible(a)) continue;
    // WCAG 2.5.8 exempts a link inside a sentence: its block holds words of its own.
    let block = a.parentElement;
    while (block && getComputedStyle(block).display === 'inline') block = block.parentElement;
    let own = block ? block.textContent : '';
    for (const other of block ? block.querySelectorAll('a') : []) own = own.replace(other.textContent, '');
    if (/[A-Za-z\u00C0-\u024F]{2,}/.test(own)) continue;
    const r = a.getBoundingClientRect();
    if (r.width < 24 || r.height < 24) targets.push({text: label(a), width: Math.round(r.width), height: Math.round(r.height)});
  }
  const images = [...document.images].filter(visible).map((img) => ({src: img.getAttribute('src') || '',
    attribute: img.getAttribute('width'), rendered: Math.round(img.getBoundingClientRect().width)}));
  return {overflow: document.documentElement.scrollWidth - window.innerWidth, doctype: !!document.doctype,
          compat_mode: document.compatMode, smallest, texts, targets, images};
}"""


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


def screenshot_name(width: int, scheme: Scheme) -> str:
    return f"check-{width}-{scheme}.png"


def run_check(html: str, out_dir: Path, chromium: Path = CHROMIUM, browser: Browser | None = None) -> RenderReport:
    """Render ``html`` four times, write the screenshots and ``check.json`` into
    ``out_dir`` and return the report. Without Chromium the report says it was skipped
    and carries the compatibility report only. ``browser``: one already started (see
    ``Browser``); else one is started here."""
    started = time.perf_counter()
    digest = html_sha256(html)
    notes = compat.report(html)
    checks = compat.checks(notes)
    missing = chromium_missing(chromium)
    if missing:
        return RenderReport(html_sha256=digest, compat=notes, checks=checks, skipped=missing)
    if browser is None:
        with Browser(chromium) as started_here:
            renders = started_here.renders(html, out_dir)
    else:
        renders = browser.renders(html, out_dir)
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


class Browser:
    """Playwright and Chromium, started on a thread of their own, with a page per colour
    scheme (each its own renderer process, so the two schemes render side by side on two
    cores). Started before the build, they come up while it runs: the check then waits
    for neither the driver, nor the browser, nor its renderers (about 0.6 s).

    ``renders(html, out_dir)`` runs the four renders; ``close()`` (or the ``with`` block)
    stops the browser and the driver. A Chromium that fails to start is a ``BuildError``
    from ``renders``."""

    def __init__(self, chromium: Path = CHROMIUM) -> None:
        import asyncio
        import threading

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="render-check", daemon=True)
        self._thread.start()
        self._playwright: Any = None
        self._browser: Any = None
        self._ready = asyncio.run_coroutine_threadsafe(self._start(chromium), self._loop)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    async def _start(self, chromium: Path) -> list[tuple[_Tab, list[str]]]:
        """The driver, the browser, a page per scheme, and for each the axe rules it
        leaves to the others."""
        import asyncio

        from playwright.async_api import async_playwright

        self._playwright = await async_playwright().start()
        self._browser = await self._playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        tabs = list(await asyncio.gather(*(_Tab.open(self._browser, scheme) for scheme in SCHEMES)))
        # The DOM is the same in both schemes: the rules that do not depend on layout or
        # colour are shared out between them.
        return list(zip(tabs, await tabs[0].split_rules(len(tabs)), strict=True))

    def renders(self, html: str, out_dir: Path) -> list[Render]:
        """Light and dark side by side, each at 600 px and then 375 px (see ``_Tab``)."""
        import asyncio

        from playwright.async_api import Error as PlaywrightError

        out_dir.mkdir(parents=True, exist_ok=True)

        async def side_by_side(tabs: list[tuple[_Tab, list[str]]]) -> list[list[Render]]:
            return list(await asyncio.gather(*(tab.renders(html, out_dir, others) for tab, others in tabs)))

        try:
            by_scheme = asyncio.run_coroutine_threadsafe(side_by_side(self._ready.result()), self._loop).result()
        except PlaywrightError as exc:
            from newsletter.errors import BuildError

            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BuildError(f"render check: Chromium failed: {first}") from None
        return [r for renders in by_scheme for r in renders]

    def close(self) -> None:
        """Stop the browser and the driver (waiting for a start still under way)."""
        import asyncio

        async def stop() -> None:
            if self._browser is not None:
                await self._browser.close()
            if self._playwright is not None:
                await self._playwright.stop()

        if not self._thread.is_alive():
            return
        try:
            with contextlib.suppress(Exception):  # a start that failed leaves nothing more to stop
                self._ready.exception()  # wait for the start, whatever its outcome
                asyncio.run_coroutine_threadsafe(stop(), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()


@dataclass
class _Tab:
    """One colour scheme's page: images served offline, the scheme emulated. It loads the
    email once and is resized in place, so the media queries apply anew and axe-core,
    injected once, stays in the page."""

    scheme: Scheme
    page: Any
    cdp: Any

    @classmethod
    async def open(cls, browser: Any, scheme: Scheme) -> _Tab:
        from playwright.async_api import Route

        async def offline(route: Route) -> None:
            if route.request.resource_type == "image":
                await route.fulfill(status=200, content_type="image/svg+xml", body=_PLACEHOLDER)
            else:
                await route.abort()

        context = await browser.new_context()
        await context.route("**/*", offline)
        page = await context.new_page()
        await page.emulate_media(color_scheme=scheme)
        await page.set_viewport_size({"width": max(WIDTHS), "height": 800})
        return cls(scheme=scheme, page=page, cdp=await context.new_cdp_session(page))

    async def split_rules(self, parts: int) -> list[list[str]]:
        """The axe rules that do not depend on layout or colour, dealt out into ``parts``
        lists, each the rules the other parts run (axe-core is injected into this page
        to read them)."""
        from axe_playwright_python.async_playwright import Axe

        await self.page.evaluate(Axe().axe_script)
        rules = await self.page.evaluate("axe.getRules().map((r) => r.ruleId)")
        shared = sorted(set(rules) - set(LAYOUT_RULES) - set(AXE_RULES_OFF))
        return [[rule for k in range(parts) if k != n for rule in shared[k::parts]] for n in range(parts)]

    async def renders(self, html: str, out_dir: Path, others: list[str]) -> list[Render]:
        """600 px then 375 px: measurements, axe-core (its default rule set but the
        ``others`` at the first width, the layout rules at the second) and a screenshot
        of each."""
        from axe_playwright_python.async_playwright import Axe

        renders: list[Render] = []
        for n, width in enumerate(sorted(WIDTHS, reverse=True)):
            if n == 0:
                await self.page.set_content(html, wait_until="load")
            else:
                await self.page.set_viewport_size({"width": width, "height": 800})
            measured = await self.page.evaluate(_MEASURE)
            axe = Axe() if n == 0 else Axe(axe_script="void 0")
            options = _axe_without(others) if n == 0 else LAYOUT_AXE_RULES
            results = (await axe.run(self.page, options=options)).response
            name = screenshot_name(width, self.scheme)
            await _screenshot(self.cdp, self.page, out_dir / name)
            renders.append(_render(width, self.scheme, name, measured, results))
        return renders


def _axe_without(others: list[str]) -> dict[str, Any]:
    """axe-core's default rule set (less those that do not apply to an email) without
    ``others``, which another render runs."""
    return {**ALL_AXE_RULES, "rules": {**AXE_RULES_OFF, **{rule: {"enabled": False} for rule in others}}}


async def _screenshot(cdp: Any, page: Any, path: Path) -> None:
    """The whole page as a PNG. Chromium's own capture with its fast PNG encoder: a
    third of the time of Playwright's full-page screenshot (0.12 s, not 0.3 s)."""
    import base64

    width, height = await page.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    shot = await cdp.send(
        "Page.captureScreenshot",
        {
            "format": "png",
            "optimizeForSpeed": True,
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    # whole or not at all (the preview may be showing the last one), and not fsynced:
    # a screenshot lost in a crash is taken again with the next check
    atomic_write(path, base64.b64decode(shot["data"]), sync=False)


def _render(width: int, scheme: Scheme, name: str, measured: dict[str, Any], axe: dict[str, Any]) -> Render:
    smallest = measured.get("smallest") or {"size": 0.0, "text": ""}
    return Render(
        width=width,
        scheme=scheme,
        screenshot=name,
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
    early_start: bool = False,
    reuse: bool = True,
) -> CheckOutput:
    """Build ``issue_path`` into ``out_dir`` and run the render check on it.
    ``early_start``: start Chromium while the build runs, unless the recorded report is
    newer than everything the build reads (then it is most likely reused); ``reuse``:
    whether a report recorded for the same HTML is reused (else the check runs again)."""
    from newsletter import render

    chromium = settings.render_check.chromium
    browser = None
    if (
        early_start
        and mode != "off"
        and chromium_missing(chromium) is None
        and not _probably_recorded(out_dir, issue_path, settings)
    ):
        browser = Browser(chromium)
    try:
        build = render.build_to_dir(issue_path, settings, out_dir)
        report = check_html(sample_html(build, settings), out_dir, chromium, mode, browser, reuse=reuse)
    finally:
        if browser is not None:
            browser.close()
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
