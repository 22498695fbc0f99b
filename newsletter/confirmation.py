"""The double opt-in confirmation email: a short message with the confirmation link,
built as a ``RenderedEmail`` and handed to the configured ``Sender`` like any batch of
one, so the outbox, SMTP and SendGrid deliver it the same way as an issue.
"""

from __future__ import annotations

import html

from newsletter import links
from newsletter.config import Settings
from newsletter.render import RenderedEmail
from newsletter.senders.base import Sender, send_one
from newsletter.store.subscribers import CONFIRMATION_TTL, Subscriber

KIND = "confirmation"  # the outbox folder and SendGrid's newsletter_issue for these


def confirmation_email(settings: Settings, confirm_url: str) -> RenderedEmail:
    """The message: why it came, the link, what happens if it is ignored."""
    pub = settings.publication
    days = CONFIRMATION_TTL.days
    text = (
        f"Please confirm your subscription to {pub.name}.\n\n"
        f"Open this link and press the button on the page to confirm:\n{confirm_url}\n\n"
        f"If you did not sign up, ignore this email: you will not be subscribed, and we "
        f"forget the address in {days} days.\n\n"
        f"{pub.organisation}\n{pub.postal_address}\n"
    )
    name, url = html.escape(pub.name), html.escape(confirm_url, quote=True)
    accent = pub.accent_color
    body = (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>Confirm your subscription to {name}</title></head>"
        '<body style="font-family:Georgia,serif;color:#222;max-width:560px;margin:0 auto;padding:24px">'
        f'<h1 style="font-size:22px">Confirm your subscription to {name}</h1>'
        "<p>Please confirm that you want to receive the newsletter.</p>"
        f'<p><a href="{url}" style="display:inline-block;background:{accent};color:#fff;'
        'padding:12px 20px;text-decoration:none;border-radius:4px">Confirm my subscription</a></p>'
        f'<p style="font-size:13px">Or open this link: <a href="{url}">{url}</a></p>'
        f'<p style="font-size:13px;color:#555">If you did not sign up, ignore this email: you will '
        f"not be subscribed, and we forget the address in {days} days.</p>"
        f'<p style="font-size:12px;color:#777">{html.escape(pub.organisation)}<br>'
        f"{html.escape(pub.postal_address)}</p></body></html>"
    )
    sender = settings.sender
    return RenderedEmail(
        slug=KIND,
        subject=f"Confirm your subscription to {pub.name}",
        html=body,
        text=text,
        from_name=sender.from_name,
        from_address=sender.from_address,
        reply_to=sender.reply_to,
        headers={"X-Newsletter-Kind": KIND},
    )


def send_confirmation(settings: Settings, sender: Sender, subscriber: Subscriber, token: str) -> None:
    """Email ``subscriber`` the link that confirms their sign-up (``token`` is secret)."""
    pub = settings.publication
    email = confirmation_email(settings, links.confirm(pub, token))
    send_one(
        sender, KIND, email, subscriber.id, links.recipient(pub, subscriber.email, subscriber.name, subscriber.token)
    )
