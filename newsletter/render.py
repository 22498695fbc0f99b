"""Render an issue once: Jinja2 -> MJML -> mjml-python -> premailer gives the HTML part, a
Jinja2 text template the plain-text part; then check the result (size, alt text, links,
postal address, unsubscribe link). ``personalize`` turns the rendered email and one
recipient into the final MIME message by placeholder substitution only.

Per-recipient values are placeholders such as ``%%unsubscribe_url-<nonce>%%`` that pass
through MJML and premailer untouched; SendGrid receives the same keys as ``substitutions``.
The nonce is a hash of the issue's content, so the content (feeds, issue files) cannot
hold a placeholder: the same text there arrives literally.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import hashlib
import html as html_lib
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import jinja2
from markdown_it import MarkdownIt
from markupsafe import Markup

from newsletter import buildcache, issuefile, links, plaintext, sanitize
from newsletter.config import Settings
from newsletter.errors import BuildError, HeaderError, TemplateError
from newsletter.models import Issue, Recipient
from newsletter.yamlfile import atomic_write

# The per-recipient placeholders. HTML and text get their own keys for values that need
# HTML escaping, so a name like "<Ann & Bob>" cannot inject.
# ``reader`` is the signed ledger row of per_subscriber tracking (tracking.py), else empty.
PLACEHOLDER_KEYS = ("unsubscribe_url", "preferences_url", "email", "email_html", "name", "name_html", "reader")
# Hex digits of the nonce: 80 bits, so no content can be made to contain its own hash.
_NONCE_LENGTH = 20
_HREF = re.compile(r'href="([^"]*)"')
_NEEDS_ESCAPE = re.compile(r"[&<>\"']")
_CSS_IMPORT = re.compile(r"@import\s+[^;]+;", re.IGNORECASE)
_KEEP_STYLE = 'data-premailer="ignore"'
_LOOPBACK = ("http://127.0.0.1", "http://localhost", "http://[::1]")
_DOCTYPE = "<!doctype html>"
# mj-image writes the height it is given into the image's CSS too, which would squash the
# image on a phone: the attribute stays (Outlook needs it), CSS keeps the aspect ratio.
_IMG_CSS_HEIGHT = re.compile(r'(<img\b[^>]*?style="[^"]*?)height:\d+px;')
# The text column: the 600 px body less the 28 px paddings on either side.
CONTENT_WIDTH = 544
# What follows the preheader in the inbox preview, instead of the email's first words
# ("View this email in your browser"): invisible joiners, about 100 characters' worth.
PREHEADER_FILLER = Markup("&#847;&zwnj;&nbsp;" * 100)

SAMPLE_RECIPIENT_TOKEN = "sample-recipient-token"


@dataclass(frozen=True)
class Check:
    """One finding of the build checks; errors stop a send, warnings inform the editor."""

    level: Literal["error", "warning"]
    message: str


def placeholder_tokens(nonce: str = "") -> dict[str, str]:
    """Placeholder key -> its token in the parts: ``%%email-<nonce>%%``. Without a nonce,
    the plain ``%%email%%`` of emails built in code from trusted text (notices,
    confirmations)."""
    suffix = f"-{nonce}" if nonce else ""
    return {key: f"%%{key}{suffix}%%" for key in PLACEHOLDER_KEYS}


def _nonce(issue: Issue) -> str:
    # The content only, not the status: approving an issue must not change its email.
    digest = hashlib.sha256(b"newsletter placeholders\0" + issuefile.checksum(issue).encode("ascii"))
    return digest.hexdigest()[:_NONCE_LENGTH]


@dataclass(frozen=True)
class RenderedEmail:
    """An issue rendered once: both parts with placeholders, and the fixed headers.
    ``placeholders`` maps each placeholder key to its token in ``html`` and ``text``."""

    slug: str
    subject: str
    html: str
    text: str
    from_name: str
    from_address: str
    reply_to: str | None = None
    list_id: str | None = None
    unsubscribe_mailto: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    placeholders: dict[str, str] = field(default_factory=placeholder_tokens)


@dataclass(frozen=True)
class Built:
    """The result of ``build_issue``: the email and what the checks found."""

    email: RenderedEmail
    checks: tuple[Check, ...]
    html_bytes: int

    @property
    def errors(self) -> list[str]:
        return [c.message for c in self.checks if c.level == "error"]

    @property
    def warnings(self) -> list[str]:
        return [c.message for c in self.checks if c.level == "warning"]


@dataclass(frozen=True)
class BuildOutput:
    """What ``build_to_dir`` wrote: (path, size) of each file, and the warnings."""

    files: list[tuple[Path, int]]
    warnings: list[str]
    built: Built


# --- Jinja2 ---------------------------------------------------------------------------

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": True})


def _environment(templates_dir: Path, output_dir: Path) -> jinja2.Environment:
    """A Jinja2 environment for a templates folder (cached: templates compile once in a
    process, and their compiled code is kept under the output folder for the next one)."""
    return _cached_environment(str(templates_dir.resolve()), str(output_dir.resolve()))


@lru_cache(maxsize=8)
def _cached_environment(templates_dir: str, output_dir: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        autoescape=lambda name: name is not None and not name.endswith(".txt.j2"),
        trim_blocks=False,
        keep_trailing_newline=True,
        auto_reload=True,
        bytecode_cache=buildcache.jinja_cache(Path(output_dir)),
    )
    env.filters["wrap"] = plaintext.wrap
    env.filters["host"] = lambda url: urlsplit(url).hostname or url
    env.filters["link"] = _link_filter
    env.filters["markdown"] = _markdown_filter
    env.filters["markdown_text"] = _markdown_text_filter
    env.filters["fit"] = fit_image
    env.filters["legible_on"] = legible_on
    return env


@dataclass(frozen=True)
class ImageSize:
    width: int
    height: int


def fit_image(image: Any, column: int) -> ImageSize | None:
    """The size an image is shown at in a ``column`` px wide column: never wider than
    its own width, height from its aspect ratio; None when the issue does not know both."""
    width, height = getattr(image, "width", None), getattr(image, "height", None)
    if not width or not height:
        return None
    shown = min(width, column)
    return ImageSize(shown, max(1, round(height * shown / width)))


def _luminance(color: str) -> float:
    def channel(v: int) -> float:
        c = v / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    """The WCAG contrast ratio of two ``#rrggbb`` colours."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def legible_on(color: str, background: str, ratio: float = 4.5) -> str:
    """``color`` mixed with white until it reaches ``ratio`` against a dark ``background``
    (the accent colour on the dark palette)."""
    rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    for step in range(0, 101, 5):
        mixed = "#" + "".join(f"{round(c + (255 - c) * step / 100):02x}" for c in rgb)
        if contrast(mixed, background) >= ratio:
            return mixed
    return "#ffffff"


def _render_template(env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"{env.loader.searchpath[0]}/{exc.name}: template not found") from None  # type: ignore[union-attr]
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{exc.filename or name}:{exc.lineno}: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{name}: {exc.message}") from None


def _tag_links(fragment: str, link: links.UtmTagger) -> str:
    """UTM-tag the hrefs of an HTML fragment (double-quoted, as nh3 and markdown-it write)."""

    def sub(m: re.Match[str]) -> str:
        url = html_lib.unescape(m.group(1))
        return f'href="{html_lib.escape(link(url), quote=True)}"'

    return _HREF.sub(sub, fragment)


def _excerpt_html(body_html: str, words: int) -> tuple[str, bool]:
    """The first paragraphs of a body, up to about ``words`` words; True if cut."""
    text = sanitize.html_to_text(body_html)
    cut = sanitize.cut_words(text, words)
    if cut == text:
        return body_html, False
    return f"<p>{html_lib.escape(cut)}</p>", True


def _context(issue: Issue, settings: Settings) -> dict[str, Any]:
    pub = settings.publication
    tag = links.UtmTagger(settings.utm, pub, issue.slug, issue.date)
    # Issue files are edited by hand: their HTML is sanitized again before rendering.
    body_html = sanitize.sanitize_html(issue.roundup.body_html, issue.roundup.url) if issue.roundup else ""
    excerpted = False
    if issue.roundup and settings.templates.roundup_body == "excerpt":
        body_html, excerpted = _excerpt_html(body_html, settings.templates.roundup_excerpt_words)
    return {
        "issue": issue,
        "pub": pub,
        "issue_date": f"{issue.date:%B} {issue.date.day}, {issue.date.year}",
        "year": issue.date.year,
        "links": {
            "web_version": links.web_version(pub, issue.slug),
            "archive": links.archive(pub),
            "subscribe": links.subscribe(pub),
        },
        "placeholders": placeholder_tokens(_nonce(issue)),
        "roundup_body": Markup(_tag_links(body_html, tag)),
        "roundup_text": plaintext.html_to_text(body_html, tag),
        "roundup_excerpted": excerpted,
        "content_width": CONTENT_WIDTH,
        "preheader_filler": PREHEADER_FILLER,
        "_tag": tag,
    }


# Per-issue filters: they depend on the issue's UTM campaign, which they read from the
# render context ("_tag"). Registered once on the cached environment, so the compiled
# templates are reused; an overlay environment per issue would have its own empty cache
# and recompile every template on every build.
@jinja2.pass_context
def _link_filter(ctx: Any, url: str) -> str:
    return str(ctx["_tag"](url))


@jinja2.pass_context
def _markdown_filter(ctx: Any, text: str) -> Markup:
    return Markup(_tag_links(_markdown.render(text), ctx["_tag"]))


@jinja2.pass_context
def _markdown_text_filter(ctx: Any, text: str) -> str:
    return plaintext.html_to_text(_markdown.render(text), ctx["_tag"])


# --- MJML and premailer ---------------------------------------------------------------


def compile_mjml(mjml_source: str, source_name: str = "email.mjml.j2") -> str:
    """MJML -> HTML with mjml-python, with no web fonts (no remote requests)."""
    from mjml import mjml2html

    try:
        html = str(mjml2html(mjml_source, disable_comments=True, fonts={}))
    except Exception as exc:  # MRML raises a bare exception type on invalid MJML
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TemplateError(f"{source_name}: invalid MJML: {first}") from None
    return _IMG_CSS_HEIGHT.sub(r"\1height:auto;", html)


@lru_cache(maxsize=1)
def _premailer() -> Any:
    """premailer's class, imported when an email is inlined (0.1 s to import)."""
    import cssutils
    from premailer import Premailer

    # premailer validates every style attribute against cssutils' property profiles,
    # whatever disable_validation says; validating only logs, and compiling the profiles'
    # patterns takes 60 ms of a build. Without profiles nothing is validated; the
    # output is the same.
    cssutils.profile.removeProfile(all=True)
    return Premailer


def compiled_html(mjml_source: str, css: str, output_dir: Path, source_name: str = "email.mjml.j2") -> str:
    """``mjml_source`` compiled and ``css`` inlined: found in the build cache under
    ``output_dir`` when this exact email was compiled before, else made and kept there
    (``source_name`` names the template in a compile error)."""
    cache = buildcache.HtmlCache(output_dir)
    key = buildcache.html_key(mjml_source, css)
    html = cache.get(key)
    if html is None:
        html = inline_css(compile_mjml(mjml_source, source_name), css)
        cache.put(key, html)
    return html


def inline_css(html: str, css: str) -> str:
    """Inline ``css`` into the elements with premailer. MJML's own <style> blocks (resets,
    column widths, media queries) are kept as they are and not inlined: inlining its
    resets into every table cell would add some 15 KB towards Gmail's clipping limit."""
    import logging

    Premailer = _premailer()  # the class, imported late

    html = _CSS_IMPORT.sub("", html)  # cssutils would fetch @import even with allow_network=False
    html = html.replace("<style", f"<style {_KEEP_STYLE}")
    inlined = str(
        Premailer(
            html,
            css_text=_CSS_IMPORT.sub("", css),
            keep_style_tags=True,
            strip_important=False,
            allow_network=False,
            allow_loading_external_files=False,
            disable_validation=True,
            disable_basic_attributes=["width", "height", "align", "bgcolor"],
            preserve_handlebar_syntax=True,
            cssutils_logging_level=logging.CRITICAL,
            cache_css_parsing=True,
        ).transform()
    )
    inlined = inlined.replace(f" {_KEEP_STYLE}", "")
    # premailer drops MJML's doctype, and without one clients render in quirks mode.
    if html.lstrip()[:9].lower() == "<!doctype" and inlined.lstrip()[:9].lower() != "<!doctype":
        inlined = f"{_DOCTYPE}\n{inlined}"
    return inlined


# --- checks ---------------------------------------------------------------------------


def check_email(
    email: RenderedEmail, size: int, settings: Settings, *, unwritten_alt: Collection[str] = ()
) -> list[Check]:
    """What a professional sender checks before an email goes out: ``email`` still holds
    the placeholders, ``size`` is the byte size of a personalized HTML part. An image
    needs an alt attribute (``alt=""`` marks it decorative), and the issue's own images
    whose alt nobody wrote (``unwritten_alt``, their sources) are flagged too."""
    import lxml.html

    html, text = email.html, email.text
    unsubscribe_url = email.placeholders["unsubscribe_url"]
    tokens = tuple(email.placeholders.values())
    checks: list[Check] = []
    limits = settings.limits
    if size > limits.html_max_bytes:
        checks.append(
            Check(
                "error",
                f"HTML is {size:,} bytes, over the {limits.html_max_bytes:,}-byte "
                "limit: Gmail clips it and hides the footer and unsubscribe link",
            )
        )
    elif size > limits.html_warn_bytes:
        checks.append(
            Check(
                "warning",
                f"HTML is {size:,} bytes, over {limits.html_warn_bytes:,}: "
                f"close to Gmail's clipping limit ({limits.html_max_bytes:,})",
            )
        )
    doc = lxml.html.document_fromstring(html)
    for img in doc.iter("img"):
        if img.get("alt") is None or img.get("src") in unwritten_alt:
            checks.append(Check("warning", f"image without alt text: {img.get('src', '(no src)')}"))
        if not (img.get("src") or "").startswith("https://"):
            checks.append(Check("warning", f"image not served over https: {img.get('src') or '(empty)'}"))
    unsubscribe_links = 0
    for a in doc.iter("a"):
        href = (a.get("href") or "").strip()
        label = " ".join(a.text_content().split())[:40] or "(no text)"
        if href == unsubscribe_url:
            unsubscribe_links += 1
        elif not href or href == "#":
            checks.append(Check("warning", f"empty link: {label!r}"))
        elif href.startswith("http://"):
            if not href.startswith(_LOOPBACK):  # a local `newsletter serve` is fine
                checks.append(Check("warning", f"link not over https: {href}"))
        elif not href.startswith(("https://", "mailto:", *tokens)):
            checks.append(Check("warning", f"link with an unexpected scheme: {href}"))
    if not unsubscribe_links:
        checks.append(
            Check("error", "no unsubscribe link in the HTML part (templates must link placeholders.unsubscribe_url)")
        )
    if unsubscribe_url not in text:
        checks.append(Check("error", "no unsubscribe link in the text part"))
    address = " ".join(settings.publication.postal_address.split())
    if address not in " ".join(doc.text_content().split()):
        checks.append(Check("error", "the postal address is missing from the HTML part (CAN-SPAM)"))
    if address not in " ".join(text.split()):
        checks.append(Check("error", "the postal address is missing from the text part (CAN-SPAM)"))
    return checks


# --- the build ------------------------------------------------------------------------


def _prepare(issue: Issue, settings: Settings) -> tuple[jinja2.Environment, dict[str, Any]]:
    """The template environment (shared, cached) and this issue's template context."""
    return _environment(settings.templates.dir, settings.output.dir), _context(issue, settings)


def render_mjml(issue: Issue, settings: Settings) -> str:
    """The issue as MJML source (step one of the pipeline; useful when editing templates)."""
    env, context = _prepare(issue, settings)
    return _render_template(env, "email.mjml.j2", context)


def build_issue(issue: Issue, settings: Settings) -> Built:
    """Render ``issue`` once into a ``RenderedEmail`` and run the checks on it."""
    env, context = _prepare(issue, settings)
    pictures = [issue.roundup.image if issue.roundup else None, *(teaser.image for teaser in issue.teasers)]
    unwritten = {image.src for image in pictures if image is not None and image.alt is None}
    return build_email(
        settings,
        "email",
        context,
        slug=issue.slug,
        subject=issue.subject,
        headers={"X-Newsletter-Issue": issue.slug},
        env=env,
        unwritten_alt=unwritten,
    )


def build_email(
    settings: Settings,
    template: str,
    context: dict[str, Any],
    *,
    slug: str,
    subject: str,
    headers: dict[str, str],
    env: jinja2.Environment | None = None,
    unwritten_alt: Collection[str] = (),
) -> Built:
    """Render ``<template>.mjml.j2`` (through MJML and premailer, with inline.css.j2) and
    ``<template>.txt.j2`` with ``context`` into a ``RenderedEmail``, and run the checks
    on it: the one pipeline of the issue and the welcome mail. ``context`` holds the
    ``placeholders`` its templates print."""
    env = env or _environment(settings.templates.dir, settings.output.dir)
    mjml_source = _render_template(env, f"{template}.mjml.j2", context)
    css = _render_template(env, "inline.css.j2", context)
    html = compiled_html(mjml_source, css, settings.output.dir, f"{template}.mjml.j2")
    text = _tidy_text(_render_template(env, f"{template}.txt.j2", context))
    sender = settings.sender
    email = RenderedEmail(
        slug=slug,
        subject=subject,
        html=html,
        text=text,
        from_name=sender.from_name,
        from_address=sender.from_address,
        reply_to=sender.reply_to,
        list_id=_list_id(settings),
        unsubscribe_mailto=sender.unsubscribe_mailto,
        headers=headers,
        placeholders=context["placeholders"],
    )
    # Size is measured on a personalized copy, the other checks on the placeholders.
    sample_html, _ = personalize_parts(email, sample_recipient(settings))
    size = len(sample_html.encode("utf-8"))
    checks = check_email(email, size, settings, unwritten_alt=unwritten_alt)
    return Built(email=email, checks=tuple(checks), html_bytes=size)


def _tidy_text(text: str) -> str:
    """Collapse the blank-line runs that template conditionals leave behind."""
    lines = [line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def _list_id(settings: Settings) -> str | None:
    if not settings.sender.list_id:
        return None
    name = settings.publication.name.replace('"', "")
    return f'"{name}" <{settings.sender.list_id}>'


def sample_recipient(settings: Settings) -> Recipient:
    """The recipient of ``newsletter build``'s sample message."""
    return links.recipient(settings.publication, "reader@example.com", "Sample Reader", SAMPLE_RECIPIENT_TOKEN)


def substitutions(email: RenderedEmail, recipient: Recipient) -> dict[str, str]:
    """``email``'s placeholder tokens -> values for one recipient (SendGrid's
    ``substitutions`` too)."""
    tokens, address, name = email.placeholders, recipient.email, recipient.name
    needs_escape = _NEEDS_ESCAPE.search  # inlined: this runs for every recipient
    values = {
        tokens["unsubscribe_url"]: recipient.unsubscribe_url,
        tokens["preferences_url"]: recipient.preferences_url or recipient.unsubscribe_url,
        tokens["email"]: address,
        tokens["email_html"]: html_lib.escape(address) if needs_escape(address) else address,
        tokens["name"]: name,
        tokens["name_html"]: html_lib.escape(name) if needs_escape(name) else name,
    }
    if recipient.reader:  # only per_subscriber tracking through the own redirect has one
        values[tokens["reader"]] = recipient.reader
    return values


@lru_cache(maxsize=32)
def _token_pattern(tokens: tuple[str, ...]) -> re.Pattern[str]:
    """One email's placeholder tokens as one pattern: compiled once per email."""
    return re.compile("|".join(map(re.escape, tokens)))


def personalize_parts(email: RenderedEmail, recipient: Recipient) -> tuple[str, str]:
    """The HTML and text parts for one recipient: substitution only, no rendering."""
    values = substitutions(email, recipient)
    pattern = _token_pattern(tuple(values))

    def sub(m: re.Match[str]) -> str:
        return values[m.group(0)]

    return pattern.sub(sub, email.html), pattern.sub(sub, email.text)


def _address(name: str, addr: str, what: str) -> Address:
    if any(c in name + addr for c in "\r\n"):
        raise HeaderError(f"{what} contains a line break: {addr!r}")
    local, _, domain = addr.rpartition("@")
    if not local or not domain:
        raise HeaderError(f"{what} is not an email address: {addr!r}")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise HeaderError(f"{what} has an invalid domain: {addr!r}") from None
    return Address(display_name=name, username=local, domain=domain)


def list_unsubscribe(email: RenderedEmail, recipient: Recipient) -> str:
    """The ``List-Unsubscribe`` value: the one-click https URL, then the optional mailto."""
    value = f"<{recipient.unsubscribe_url}>"
    if email.unsubscribe_mailto:
        value += f", <mailto:{email.unsubscribe_mailto}?subject=unsubscribe>"
    return value


def personalize(
    email: RenderedEmail, recipient: Recipient, now: dt.datetime | None = None, message_id: str | None = None
) -> EmailMessage:
    """The complete MIME message for one recipient (multipart/alternative, UTF-8);
    ``message_id``: its Message-ID (default: a random one)."""
    if "\n" in email.subject or "\r" in email.subject:
        raise HeaderError(f"the subject contains a line break: {email.subject!r}")
    html, text = personalize_parts(email, recipient)
    # An address with a non-ASCII local part (josé@...) cannot be encoded in ASCII headers:
    # such a message is SMTPUTF8 (RFC 6531) and carries its headers as UTF-8.
    msg = EmailMessage(policy=email_policy if recipient.email.isascii() else email_policy_utf8)
    try:
        msg["Subject"] = email.subject
        msg["From"] = _address(email.from_name, email.from_address, "sender.from_address")
        msg["To"] = _address(recipient.name, recipient.email, "recipient")
        if email.reply_to:
            msg["Reply-To"] = _address("", email.reply_to, "sender.reply_to")
        msg["Date"] = format_datetime(now or dt.datetime.now(dt.UTC))
        msg["Message-ID"] = message_id or make_msgid(domain=email.from_address.rpartition("@")[2])
        if email.list_id:
            msg["List-Id"] = email.list_id
        msg["List-Unsubscribe"] = list_unsubscribe(email, recipient)
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        for key, value in email.headers.items():
            msg[key] = value
    except ValueError as exc:  # the email package refuses CR/LF and malformed values
        raise HeaderError(f"invalid header value: {exc}") from None
    msg.set_content(text, subtype="plain", charset="utf-8")
    msg.add_alternative(html, subtype="html", charset="utf-8")
    return msg


email_policy = email.policy.default.clone(max_line_length=998)
email_policy_utf8 = email_policy.clone(utf8=True)


def build_to_dir(issue_path: Path, settings: Settings, out_dir: Path) -> BuildOutput:
    """Build an issue file into ``out_dir``: email.html, email.txt and email.eml for the
    sample recipient. Nothing is written when a check fails."""
    issue = issuefile.load(issue_path)
    built = build_issue(issue, settings)
    if built.errors:
        more = len(built.errors) - 1
        extra = f" (and {more} more)" if more else ""
        raise BuildError(f"{issue_path}: {built.errors[0]}{extra}")
    recipient = sample_recipient(settings)
    html, text = personalize_parts(built.email, recipient)
    eml = personalize(built.email, recipient).as_bytes()
    files: list[tuple[Path, int]] = []
    for name, data in (("email.html", html.encode("utf-8")), ("email.txt", text.encode("utf-8")), ("email.eml", eml)):
        path = out_dir / name
        atomic_write(path, data, sync=False)  # made again by the next build
        files.append((path, len(data)))
    return BuildOutput(files=files, warnings=built.warnings, built=built)
