"""Render: structure of the HTML and text parts, checks, placeholders, no network."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import lxml.html
import pytest

from newsletter import issuefile, render
from newsletter.config import Settings, load_settings
from newsletter.errors import TemplateError
from newsletter.models import Recipient

from .conftest import EXAMPLE_ISSUE, VICTIM, assert_only_templates_personalize, forged_placeholder_issue


@pytest.fixture
def built(settings: Settings) -> render.Built:
    return render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings)


def _doc(html: str) -> lxml.html.HtmlElement:
    return lxml.html.document_fromstring(html)


def test_every_teaser_title_and_link_is_in_the_html(built: render.Built) -> None:
    issue = issuefile.load(EXAMPLE_ISSUE)
    doc = _doc(built.email.html)
    anchors = [(a.text_content().strip(), a.get("href")) for a in doc.iter("a")]
    for teaser in issue.teasers:
        titled = [href for text, href in anchors if text == teaser.title]
        assert titled, f"no link titled {teaser.title!r}"
        assert titled[0].startswith(teaser.url + "?")
        assert "utm_source=newsletter" in titled[0]
        assert any(text.startswith("Keep reading") and href == titled[0] for text, href in anchors)
        if teaser.section:
            assert teaser.section in doc.text_content()
        if teaser.image and teaser.image.credit:
            assert teaser.image.credit in doc.text_content()


def test_roundup_body_and_subheadings_are_in_full(built: render.Built) -> None:
    doc = _doc(built.email.html)
    headings = [h.text_content() for h in doc.iter("h2")]
    assert "Other Ukraine news this week" in headings
    assert "From the State Department briefing on Oct. 22" in headings
    assert len(list(doc.iter("li"))) == 4
    assert len(list(doc.iter("blockquote"))) == 1


def test_every_image_has_alt_text_and_https(built: render.Built) -> None:
    images = list(_doc(built.email.html).iter("img"))
    assert len(images) == 5  # the round-up's and four teasers' (one teaser has none)
    for img in images:
        assert img.get("alt", "").strip(), img.get("src")
        assert img.get("src", "").startswith("https://")
    assert not [c for c in built.checks if "alt" in c.message]


def test_no_script_and_no_remote_css(built: render.Built) -> None:
    html = built.email.html
    doc = _doc(html)
    assert not list(doc.iter("script"))
    assert "@import" not in html
    assert not [l for l in doc.iter("link") if l.get("rel") == "stylesheet"]
    assert "fonts.googleapis.com" not in html


def test_media_queries_keep_important(built: render.Built) -> None:
    styles = " ".join(s.text_content() for s in _doc(built.email.html).iter("style"))
    assert "@media only screen and (max-width: 480px)" in styles or "@media only screen and (max-width:480px)" in styles
    mobile = styles[styles.index("max-width: 480px") :]
    assert "font-size: 25px !important" in mobile
    assert "prefers-color-scheme: dark" in styles
    assert "!important" in styles


def test_css_is_inlined(built: render.Built) -> None:
    doc = _doc(built.email.html)
    blockquote = next(doc.iter("blockquote"))
    assert "border-left" in blockquote.get("style", "")
    h2 = next(doc.iter("h2"))
    assert "font-family" in h2.get("style", "")


def test_head_has_lang_title_preheader_and_color_scheme(built: render.Built) -> None:
    issue = issuefile.load(EXAMPLE_ISSUE)
    doc = _doc(built.email.html)
    assert doc.get("lang") == "en"
    assert doc.find(".//title").text == issue.subject
    assert doc.find(".//meta[@name='color-scheme']").get("content") == "light dark"
    hidden = [d for d in doc.iter("div") if "display:none" in (d.get("style") or "").replace(" ", "")]
    assert any(issue.preheader in d.text_content() for d in hidden)


def test_placeholders_survive_mjml_and_premailer(built: render.Built) -> None:
    html, text, tokens = built.email.html, built.email.text, built.email.placeholders
    doc = _doc(html)
    unsubscribe = [a for a in doc.iter("a") if a.get("href") == tokens["unsubscribe_url"]]
    assert unsubscribe and unsubscribe[0].text_content() == "Unsubscribe"
    assert f"Sent to {tokens['email_html']}" in " ".join(doc.text_content().split())
    assert f"Unsubscribe: {tokens['unsubscribe_url']}" in text
    assert f"Sent to {tokens['email']}" in text
    assert "%25%25" not in html  # not URL-encoded by premailer


def test_placeholder_tokens_carry_a_nonce_from_the_issue(settings: Settings, built: render.Built) -> None:
    tokens = built.email.placeholders
    assert set(tokens) == set(render.PLACEHOLDER_KEYS)
    nonce = tokens["email"].removeprefix("%%email-").removesuffix("%%")
    assert re.fullmatch(r"[0-9a-f]{20}", nonce)
    assert tokens == render.placeholder_tokens(nonce)
    again = render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings)
    assert (again.email.html, again.email.text, again.email.placeholders) == (
        built.email.html,
        built.email.text,
        tokens,
    )
    # Approving changes the issue file, not its content: the email stays byte-identical.
    approved = issuefile.load(EXAMPLE_ISSUE).model_copy(update={"status": "approved"})
    assert render.build_issue(approved, settings).email.html == built.email.html
    issue = issuefile.load(EXAMPLE_ISSUE)
    other = render.build_issue(issue.model_copy(update={"preheader": issue.preheader + "!"}), settings)
    assert not set(other.email.placeholders.values()) & set(tokens.values())


def test_placeholder_lookalikes_in_content_arrive_literally(settings: Settings) -> None:
    built = render.build_issue(forged_placeholder_issue(), settings)
    assert not built.errors
    msg = render.personalize(built.email, VICTIM)
    html, text = msg.get_body(("html",)), msg.get_body(("plain",))
    assert html is not None and text is not None
    assert_only_templates_personalize(msg["Subject"], html.get_content(), text.get_content())


def test_lookalike_in_content_is_no_unsubscribe_link(project: Path, settings: Settings) -> None:
    template = project / "templates/email.txt.j2"
    source = template.read_text(encoding="utf-8")
    source = source.replace("Unsubscribe: {{ placeholders.unsubscribe_url }}", "")
    template.write_text(source, encoding="utf-8")
    built = render.build_issue(forged_placeholder_issue(), settings)
    assert built.errors == ["no unsubscribe link in the text part"]


def test_personalize_parts_substitutes_and_escapes(built: render.Built) -> None:
    recipient = Recipient(
        email="ann&bob@example.com", name="<Ann>", unsubscribe_url="https://x.example/unsubscribe/TOKEN"
    )
    html, text = render.personalize_parts(built.email, recipient)
    assert "%%" not in html and "%%" not in text
    assert 'href="https://x.example/unsubscribe/TOKEN"' in html
    assert "ann&amp;bob@example.com" in html and "ann&bob@example.com" not in html
    assert "Sent to ann&bob@example.com" in text


def test_size_is_under_the_limits(built: render.Built) -> None:
    assert built.html_bytes < 51_200
    assert not built.errors and not built.warnings


def test_text_part_reads_well(built: render.Built) -> None:
    text = built.email.text
    issue = issuefile.load(EXAMPLE_ISSUE)
    assert text.startswith("STATECRAFT REVIEW\n")
    for teaser in issue.teasers:
        assert teaser.title in text.replace("\n", " ")
        assert f"Keep reading: {teaser.url}?utm_source=newsletter" in text
    assert "OTHER UKRAINE NEWS THIS WEEK" in text
    assert "* Loans from frozen assets." in text
    assert "> “We know how to answer this" in text
    assert "1100 Example Avenue NW" in text
    assert "<" not in text.replace("«", "")  # no HTML tags left
    long_lines = [l for l in text.splitlines() if len(l) > 72 and "http" not in l]
    assert not long_lines


def test_utm_only_on_own_domain(built: render.Built) -> None:
    hrefs = [a.get("href") for a in _doc(built.email.html).iter("a")]
    social = [h for h in hrefs if h.startswith("https://mastodon.example")]
    assert social == ["https://mastodon.example/@statecraft"]
    assert all(
        "utm_campaign=diplomacy-watch-2024-10-25" in h
        for h in hrefs
        if h.startswith("https://news.example.org/") and "feeds/" not in h
    )


def test_excerpt_mode_adds_keep_reading(write_config) -> None:
    path = write_config({"templates": {"roundup_body": "excerpt", "roundup_excerpt_words": 40}})
    settings = load_settings(path, env={})
    built = render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings)
    doc = _doc(built.email.html)
    assert not doc.cssselect(".body-text h2")  # the round-up's sub-headings are cut
    buttons = [a for a in doc.iter("a") if a.text_content().strip() == "Keep reading"]
    assert buttons and buttons[0].get("href").startswith("https://news.example.org/diplomacy-watch-north-korea-troops?")
    assert "Keep reading: https://news.example.org/diplomacy-watch-north-korea-troops" in built.email.text


def test_hostile_body_html_in_an_issue_file_is_sanitized(settings: Settings) -> None:
    issue = issuefile.load(EXAMPLE_ISSUE)
    assert issue.roundup is not None
    body = (
        '<p onclick="steal()">Hi <a href="javascript:alert(1)">x</a></p>'
        '<script>alert(2)</script><iframe src="https://evil.example.net"></iframe>'
        '<img src="https://pixel.tracker.example.net/p.gif" width="1" height="1">'
    )
    hostile = issue.model_copy(update={"roundup": issue.roundup.model_copy(update={"body_html": body})})
    html = render.build_issue(hostile, settings).email.html
    assert "<script" not in html and "onclick" not in html and "javascript:" not in html
    assert "<iframe" not in html and "pixel.tracker" not in html


def test_over_size_email_is_an_error(write_config) -> None:
    settings = load_settings(write_config({"limits": {"html_warn_bytes": 10_000, "html_max_bytes": 20_000}}), env={})
    built = render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings)
    assert any("over the 20,000-byte limit" in e for e in built.errors)


def test_warning_between_the_limits(write_config) -> None:
    settings = load_settings(write_config({"limits": {"html_warn_bytes": 20_000}}), env={})
    built = render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings)
    assert not built.errors
    assert any("close to Gmail's clipping limit" in w for w in built.warnings)


def test_template_without_unsubscribe_or_address_fails_the_checks(project: Path, settings: Settings) -> None:
    footer = project / "templates/partials/footer.mjml.j2"
    footer.write_text("<mj-section><mj-column><mj-text>Bye</mj-text></mj-column></mj-section>\n", encoding="utf-8")
    built = render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings)
    assert "no unsubscribe link in the HTML part (templates must link placeholders.unsubscribe_url)" in built.errors
    assert "the postal address is missing from the HTML part (CAN-SPAM)" in built.errors


@pytest.mark.parametrize(("alt", "flagged"), [(None, True), ("", False)], ids=["unwritten", "decorative"])
def test_missing_alt_text_is_flagged(settings: Settings, alt: str | None, flagged: bool) -> None:
    """An image nobody described is flagged; ``alt: ""`` (what gather writes when the only
    description would repeat the headline) marks it decorative and is accepted."""
    issue = issuefile.load(EXAMPLE_ISSUE)
    teaser = issue.teasers[0]
    assert teaser.image is not None
    bare = teaser.model_copy(update={"image": teaser.image.model_copy(update={"alt": alt})})
    built = render.build_issue(issue.model_copy(update={"teasers": [bare, *issue.teasers[1:]]}), settings)
    assert (f"image without alt text: {teaser.image.src}" in built.warnings) is flagged


def test_body_images_without_alt_pass_the_alt_check(settings: Settings) -> None:
    """Gathered bodies hold images without alt (issue 12): the sanitizer marks them
    decorative, so the build does not fail its own check on gathered content."""
    issue = issuefile.load(EXAMPLE_ISSUE)
    assert issue.roundup is not None
    body = issue.roundup.body_html + '<p><img src="https://news.example.org/a.jpg"></p>'
    roundup = issue.roundup.model_copy(update={"body_html": body})
    built = render.build_issue(issue.model_copy(update={"roundup": roundup}), settings)
    assert '<img src="https://news.example.org/a.jpg" alt=""' in built.email.html
    assert not any("a.jpg" in warning for warning in built.warnings)


def test_template_errors_name_the_template(project: Path, settings: Settings) -> None:
    (project / "templates/partials/teaser.mjml.j2").write_text("{{ teaser.nonexistent_field }}", encoding="utf-8")
    with pytest.raises(
        TemplateError, match="email.mjml.j2: 'newsletter.models.Teaser object' has no attribute 'nonexistent_field'"
    ):
        render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings)
    (project / "templates/partials/teaser.mjml.j2").write_text("{% if %}", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"teaser\.mjml\.j2:1: "):
        render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings)
    shutil.rmtree(project / "templates/partials")
    with pytest.raises(TemplateError, match="partials/header.mjml.j2: template not found"):
        render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings)


def test_templates_autoescape_issue_text(settings: Settings) -> None:
    issue = issuefile.load(EXAMPLE_ISSUE)
    evil = issue.teasers[0].model_copy(update={"title": "<b onmouseover=x>Bold</b> & co"})
    built = render.build_issue(issue.model_copy(update={"teasers": [evil]}), settings)
    assert "&lt;b onmouseover=x&gt;Bold&lt;/b&gt; &amp; co" in built.email.html
    assert "<b onmouseover" not in built.email.html


def test_build_makes_no_network_connection(settings: Settings, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    built = render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings)
    assert built.email.html


def test_remote_css_import_in_a_template_is_dropped(project: Path, settings: Settings, monkeypatch) -> None:
    css = project / "templates/inline.css.j2"
    css.write_text(
        "@import url(https://fonts.example.net/x.css);\n" + css.read_text(encoding="utf-8"), encoding="utf-8"
    )
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("network"))
    html = render.build_issue(issuefile.load(EXAMPLE_ISSUE), settings).email.html
    assert "fonts.example.net" not in html


def test_render_mjml_has_only_known_mjml_tags(settings: Settings) -> None:
    """mjml-python passes unknown tags silently: validate our own templates here."""
    source = render.render_mjml(issuefile.load(EXAMPLE_ISSUE), settings)
    known = {
        "mjml",
        "mj-head",
        "mj-title",
        "mj-preview",
        "mj-raw",
        "mj-attributes",
        "mj-all",
        "mj-body",
        "mj-section",
        "mj-column",
        "mj-text",
        "mj-image",
        "mj-button",
        "mj-divider",
        "mj-class",
        "mj-style",
    }
    tags = set(re.findall(r"<(mj[\w-]*)", source))
    assert tags <= known, tags - known
    for line in source.splitlines():  # MRML mangles attributes holding newlines or tabs
        for value in re.findall(r'="([^"]*)"', line):
            assert "\t" not in value


# --- what subscribers' clients see (issue 11) -------------------------------------------


def test_doctype_survives_premailer(built: render.Built) -> None:
    assert built.email.html.startswith("<!doctype html>\n<html")


def test_headings_h1_for_the_roundup_h2_for_teasers_and_appeal(built: render.Built) -> None:
    issue = issuefile.load(EXAMPLE_ISSUE)
    doc = _doc(built.email.html)
    assert issue.roundup is not None and issue.appeal is not None
    assert [h.text_content() for h in doc.iter("h1")] == [issue.roundup.title]
    assert [h.text_content() for h in doc.cssselect("h2.teaser-title")] == [t.title for t in issue.teasers]
    assert [h.text_content() for h in doc.cssselect("h2.appeal-heading")] == [issue.appeal.heading]


def test_images_are_sized_for_the_544_px_column(built: render.Built) -> None:
    issue = issuefile.load(EXAMPLE_ISSUE)
    doc = _doc(built.email.html)
    images = {img.get("src"): img for img in doc.iter("img")}
    assert images and {img.get("width") for img in images.values()} == {"544"}
    assert issue.roundup is not None and issue.roundup.image is not None
    lead = images[issue.roundup.image.src]  # 1200x800 in the issue file
    assert lead.get("height") == "363" and "height:auto" in lead.get("style").replace(" ", "")
    unknown = [t.image for t in issue.teasers if t.image and not t.image.height]
    assert unknown and images[unknown[0].src].get("height") == "auto"


def test_an_image_narrower_than_the_column_is_not_stretched(settings: Settings) -> None:
    issue = issuefile.load(EXAMPLE_ISSUE)
    teaser = issue.teasers[0]
    assert teaser.image is not None
    small = teaser.model_copy(update={"image": teaser.image.model_copy(update={"width": 300, "height": 200})})
    built = render.build_issue(issue.model_copy(update={"teasers": [small, *issue.teasers[1:]]}), settings)
    img = next(i for i in _doc(built.email.html).iter("img") if i.get("src") == teaser.image.src)
    assert (img.get("width"), img.get("height")) == ("300", "200")


def test_the_page_outside_the_column_has_the_page_colour(built: render.Built) -> None:
    body = _doc(built.email.html).find("body")
    assert "background-color:#f3f1ec" in body.get("style").replace(" ", "")


def test_preheader_comes_first_with_filler_and_no_white_text(built: render.Built) -> None:
    issue = issuefile.load(EXAMPLE_ISSUE)
    doc = _doc(built.email.html)
    first_text = next(t for t in doc.find("body").itertext() if t.strip())
    assert first_text.startswith(issue.preheader)  # what the inbox shows after the subject
    first = doc.find_class("preheader")[0]
    assert first.get("aria-hidden") == "true" and first.text == first_text
    text = first.text_content()
    assert text.startswith(issue.preheader) and text[len(issue.preheader) :].strip("\u034f\u200c\u00a0") == ""
    assert len(text) - len(issue.preheader) >= 200
    assert "#ffffff" not in first.get("style") and "color" not in first.get("style")
    # the only preheader: mjml's own (white text) is not used
    assert (
        sum(issue.preheader in d.text_content() for d in doc.iter("div") if "display:none" in (d.get("style") or ""))
        == 1
    )


def test_small_print_is_readable(built: render.Built) -> None:
    doc = _doc(built.email.html)
    sent_to = next(d for d in doc.iter("div") if (d.text or "").startswith("Sent to"))
    style = sent_to.get("style").replace(" ", "")
    color = re.search(r"(?<!-)color:(#[0-9a-f]{6})", style).group(1)
    assert "font-size:12px" in style and render.contrast(color, "#f3f1ec") >= 4.5


def test_dark_palette_for_apple_mail_and_outlook_com(built: render.Built) -> None:
    css = "".join(s.text or "" for s in _doc(built.email.html).iter("style"))
    dark = css[css.index("@media (prefers-color-scheme: dark)") :]
    assert ".card, .card > table { background: #262523 !important; }" in dark
    assert "[data-ogsb] .card, [data-ogsb] .card > table { background: #262523 !important; }" in dark
    assert "[data-ogsc] .card div," in dark
    accent = re.search(r"\.label div, \.card \.teaser-label[^{]*\{ color: (#[0-9a-f]{6})", dark).group(1)
    assert render.contrast(accent, "#332c22") >= 4.5 and render.contrast(accent, "#262523") >= 4.5


def test_legible_on_lightens_until_it_reads() -> None:
    assert render.legible_on("#b3261e", "#262523") != "#b3261e"
    assert render.contrast(render.legible_on("#000000", "#000000"), "#000000") >= 4.5
    assert render.legible_on("#ffffff", "#262523") == "#ffffff"
    assert round(render.contrast("#ffffff", "#000000"), 1) == 21.0


def test_gathered_image_alt_does_not_repeat_the_title(settings: Settings) -> None:
    import datetime as dt

    from newsletter.gather import gather_issue

    issue = gather_issue(settings, dt.datetime(2024, 10, 25, 21, 0, tzinfo=dt.UTC)).issue
    images = [(t.title, t.image) for t in issue.teasers if t.image]
    assert images and all(image.alt != title for title, image in images)
    assert (
        issue.roundup
        and issue.roundup.image
        and issue.roundup.image.alt == "Soldiers on a training ground in eastern Ukraine"
    )
    built = render.build_issue(issue, settings)
    for img in _doc(built.email.html).iter("img"):
        if not img.get("alt"):  # a decorative image is not a link without a name
            assert img.getparent().tag != "a", img.get("src")


# Known mjml-python bugs (README, "Known issues"). When a test here fails, the bug is
# fixed upstream: the template's workaround can go.


def test_known_issue_two_and_three_value_padding_ignored_when_sizing_images() -> None:
    def width(padding: str) -> str:
        html = render.compile_mjml(
            f'<mjml><mj-body><mj-section><mj-column><mj-image padding="{padding}" '
            'src="https://example.org/a.jpg" /></mj-column></mj-section></mj-body></mjml>'
        )
        return re.search(r'<img[^>]* width="(\d+)"', html).group(1)

    assert width("0px 28px 0px 28px") == "544"
    assert width("0 28px") == "600"  # MJML gives 544
    assert width("28px 28px 0") == "600"  # MJML gives 544


def test_known_issue_mj_body_attributes_in_mj_attributes_ignored() -> None:
    section = "<mj-section><mj-column><mj-text>x</mj-text></mj-column></mj-section>"
    ignored = render.compile_mjml(
        '<mjml><mj-head><mj-attributes><mj-body background-color="#f3f1ec" width="500px" />'
        f"</mj-attributes></mj-head><mj-body>{section}</mj-body></mjml>"
    )
    direct = render.compile_mjml(f'<mjml><mj-body background-color="#f3f1ec" width="500px">{section}</mj-body></mjml>')
    assert "#f3f1ec" not in ignored and "max-width:500px" not in ignored
    assert "#f3f1ec" in direct and "max-width:500px" in direct
