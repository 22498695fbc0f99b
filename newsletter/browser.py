"""Headless Chromium for the render check: Playwright's driver, Debian's ``chromium`` and a
page per colour scheme, started on a thread of their own so that they come up while the
configuration is read and the email built. The pages open the email offline (images are
placeholders, nothing is fetched), measure it at each width (``_MEASURE``), run axe-core
and take a screenshot; ``rendercheck`` turns what they saw into the report.

This module imports neither the renderer nor Playwright at import time: the CLI starts
the driver before anything else.
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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

# The DOM is the same in every render; only the width and the colour scheme change. So
# the rules whose outcome does not depend on layout or colours run once, shared out
# between the first light and the first dark render, and every render runs the others.
LAYOUT_RULES = ["color-contrast", "target-size", "link-in-text-block", "scrollable-region-focusable"]
# Not applicable to an email, which a client shows inside its own page and landmarks.
AXE_RULES_OFF = {"region": {"enabled": False}, "landmark-one-main": {"enabled": False}}
ALL_AXE_RULES: dict[str, Any] = {"resultTypes": ["violations"], "rules": AXE_RULES_OFF}
LAYOUT_AXE_RULES: dict[str, Any] = {"resultTypes": ["violations"], "runOnly": {"type": "rule", "values": LAYOUT_RULES}}

# Remote images are never fetched: each is a neutral 3:2 placeholder, shown at the
# image's own width, so the layout is close to the one readers get, offline.
_PLACEHOLDER = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="1200" height="800" viewBox="0 0 1200 800">'
    '<rect width="1200" height="800" fill="#b9b4aa"/></svg>'
)

_PLACEHOLDER_URI = "data:image/svg+xml," + urllib.parse.quote(_PLACEHOLDER)
_IMG_SRC = re.compile(r'(<img\b[^>]*?\s)src="([^"]*)"', re.IGNORECASE)


def _offline_images(html: str) -> str:
    """``html`` with each <img>'s source the placeholder, inline (no request to wait
    for), and the real one kept in ``data-check-src`` for the report. Any other image
    (a CSS background) goes through the page's route and gets the placeholder there."""
    return _IMG_SRC.sub(lambda m: f'{m.group(1)}src="{_PLACEHOLDER_URI}" data-check-src="{m.group(2)}"', html)


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
  const images = [...document.images].filter(visible).map((img) => ({src: img.getAttribute('data-check-src') || img.getAttribute('src') || '',
    attribute: img.getAttribute('width'), rendered: Math.round(img.getBoundingClientRect().width)}));
  return {overflow: document.documentElement.scrollWidth - window.innerWidth, doctype: !!document.doctype,
          compat_mode: document.compatMode, smallest, texts, targets, images};
}"""


def screenshot_name(width: int, scheme: Scheme) -> str:
    return f"check-{width}-{scheme}.png"


@dataclass(frozen=True)
class RawRender:
    """What one render (a width and a colour scheme) gave: the page's own measurements
    (``_MEASURE``), axe-core's results and the screenshot's file name."""

    width: int
    scheme: Scheme
    screenshot: str
    measured: dict[str, Any]
    axe: dict[str, Any]


class Browser:
    """Playwright and Chromium, started on a thread of their own, with a page per colour
    scheme (each its own renderer process, so the two schemes render side by side on two
    cores) and axe-core loaded in each. Started first, they come up while the
    configuration is read and the email built: the check then waits for neither the
    driver, nor the browser, nor its renderers (about a second).

    ``Browser(None)`` starts the driver only, before the browser's path is known;
    ``launch(path)`` then starts the browser. ``renders(html, out_dir)`` runs the four
    renders; ``close()`` (or the ``with`` block) stops the browser and the driver. A
    Chromium that fails to start is a ``BuildError`` from ``renders``."""

    def __init__(self, chromium: Path | None = CHROMIUM) -> None:
        import asyncio
        import concurrent.futures
        import threading

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="render-check", daemon=True)
        self._thread.start()
        self._playwright: Any = None
        self._browser: Any = None
        self._chromium: concurrent.futures.Future[Path | None] = concurrent.futures.Future()
        if chromium is not None:
            self.launch(chromium)
        self._ready = asyncio.run_coroutine_threadsafe(self._start(), self._loop)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def launch(self, chromium: Path) -> None:
        """Start ``chromium`` (once the driver is up): for a ``Browser(None)``."""
        if not self._chromium.done():
            self._chromium.set_result(chromium)

    async def _start(self) -> list[_Tab]:
        """The driver, then (once its path is given) the browser and a page per scheme."""
        import asyncio

        from playwright.async_api import async_playwright

        self._playwright = await async_playwright().start()
        chromium = await asyncio.wrap_future(self._chromium)
        if chromium is None:  # closed before a browser was asked for
            return []
        self._browser = await self._playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        return list(await asyncio.gather(*(_Tab.open(self._browser, scheme) for scheme in SCHEMES)))

    def renders(self, html: str, out_dir: Path, meanwhile: Callable[[], object] | None = None) -> list[RawRender]:
        """Light and dark side by side, each at 600 px and then 375 px (see ``_Tab``).
        ``meanwhile`` runs on the calling thread while the pages work."""
        import asyncio

        from playwright.async_api import Error as PlaywrightError

        out_dir.mkdir(parents=True, exist_ok=True)

        async def side_by_side() -> list[list[RawRender]]:
            tabs = await asyncio.wrap_future(self._ready)
            # The DOM is the same in both schemes: the rules that depend on neither layout
            # nor colour are shared out between them (the n-th of every len(tabs)).
            shares = [(n, len(tabs)) for n in range(len(tabs))]
            return list(
                await asyncio.gather(
                    *(tab.renders(html, out_dir, share) for tab, share in zip(tabs, shares, strict=True))
                )
            )

        working = asyncio.run_coroutine_threadsafe(side_by_side(), self._loop)
        if meanwhile is not None:
            meanwhile()
        try:
            by_scheme = working.result()
        except PlaywrightError as exc:
            from newsletter.errors import BuildError

            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BuildError(f"render check: Chromium failed: {first}") from None
        return [r for renders in by_scheme for r in renders]

    def close(self) -> None:
        """Stop the browser and the driver (after a start still under way)."""
        import asyncio

        async def stop() -> None:
            if self._browser is not None:
                await self._browser.close()
            if self._playwright is not None:
                await self._playwright.stop()

        if not self._thread.is_alive():
            return
        if not self._chromium.done():
            self._chromium.set_result(None)
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

        from axe_playwright_python.async_playwright import Axe

        context = await browser.new_context()
        await context.route("**/*", offline)
        page = await context.new_page()
        await page.emulate_media(color_scheme=scheme)
        await page.set_viewport_size({"width": max(WIDTHS), "height": 800})
        # axe-core injected and run once on the empty page while the email is being built:
        # loading the email (document.open and write) keeps the window and so axe, already
        # compiled (0.35 s a page otherwise spent after the email is known)
        await page.evaluate(Axe().axe_script)
        await page.evaluate("axe.run(document, {resultTypes: ['violations']}).then(() => null)")
        return cls(scheme=scheme, page=page, cdp=await context.new_cdp_session(page))

    async def renders(self, html: str, out_dir: Path, share: tuple[int, int]) -> list[RawRender]:
        """600 px then 375 px: measurements, axe-core and a screenshot of each. axe-core
        runs its layout and colour rules at both widths, and at the first also ``share``
        (n, of) of the others: every of-th of them in order, starting at the n-th."""
        from axe_playwright_python.async_playwright import Axe

        renders: list[RawRender] = []
        for n, width in enumerate(sorted(WIDTHS, reverse=True)):
            if n == 0:
                await self.page.set_content(_offline_images(html), wait_until="load")
                if not await self.page.evaluate("typeof axe === 'object'"):
                    await self.page.evaluate(Axe().axe_script)  # loading the email lost it
                rules = await self.page.evaluate("axe.getRules().map((r) => r.ruleId)")
                options = _axe_share(rules, *share)
            else:
                await self.page.set_viewport_size({"width": width, "height": 800})
                options = LAYOUT_AXE_RULES
            measured = await self.page.evaluate(_MEASURE)
            results = (await Axe(axe_script="void 0").run(self.page, options=options)).response
            name = screenshot_name(width, self.scheme)
            await _screenshot(self.cdp, self.page, out_dir / name)
            renders.append(RawRender(width, self.scheme, name, measured, results))
        return renders


def _axe_share(rules: list[str], n: int, of: int) -> dict[str, Any]:
    """axe-core's default rule set (less those that do not apply to an email) without the
    rules that depend on neither layout nor colour and are not in share ``n`` of ``of``
    (other renders run those)."""
    shared = sorted(set(rules) - set(LAYOUT_RULES) - set(AXE_RULES_OFF))
    others = [rule for k, rule in enumerate(shared) if k % of != n]
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
    from newsletter.yamlfile import atomic_write

    # whole or not at all (the preview may be showing the last one), and not fsynced:
    # a screenshot lost in a crash is taken again with the next check
    atomic_write(path, base64.b64decode(shot["data"]), sync=False)
