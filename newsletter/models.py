"""The newsletter's content model: an ``Issue`` holds a ``Roundup``, ``Teaser``s, an optional
``Appeal``; a ``Recipient`` is who one message is for. These are what issue files hold,
what gather produces and what render consumes.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")  # use with fullmatch: "$" allows a final newline
IssueStatus = Literal["draft", "approved", "sent"]


class Content(BaseModel):
    """Issue-file content: unknown keys are errors, so typos do not vanish silently."""

    model_config = ConfigDict(extra="forbid")


def check_url(value: str, *, mailto: bool = False) -> str:
    """An absolute http(s) URL (or mailto: where allowed), with no whitespace."""
    value = value.strip()
    schemes = ("https://", "http://", "mailto:") if mailto else ("https://", "http://")
    if not value.startswith(schemes) or any(c.isspace() for c in value):
        allowed = "http(s) or mailto" if mailto else "http(s)"
        raise ValueError(f"must be an absolute {allowed} URL, got {value!r}")
    host = value.split("://", 1)[-1].split("/", 1)[0]
    if "://" in value and not host:
        raise ValueError(f"has no host: {value!r}")
    return value


def single_line(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError("must be a single line")
    return value


Url = Annotated[str, AfterValidator(check_url)]


class Image(Content):
    src: Url
    # None: nobody wrote one (the build warns); "": decorative by choice, as gather writes
    # for a picture whose only description would repeat the headline beside it.
    alt: str | None = None
    credit: str | None = None
    width: int | None = Field(default=None, gt=0)
    height: int | None = Field(default=None, gt=0)


class Roundup(Content):
    """The lead piece: the week's "Diplomacy Watch" article, in full or as an excerpt."""

    title: str = Field(min_length=1)
    url: Url
    dek: str = ""
    label: str = ""
    author: str = ""
    published: dt.datetime | None = None
    guid: str | None = None
    image: Image | None = None
    body_html: str = ""


class Teaser(Content):
    """One of the week's other articles: label, image, title, excerpt, "Keep reading"."""

    title: str = Field(min_length=1)
    url: Url
    section: str = ""
    author: str = ""
    published: dt.datetime | None = None
    guid: str | None = None
    image: Image | None = None
    excerpt: str = ""


class Appeal(Content):
    """An optional donation request between the teasers and the footer."""

    heading: str = Field(min_length=1)
    body: str = Field(min_length=1)  # Markdown
    button_label: str = Field(min_length=1)
    button_url: Url


class Gathered(Content):
    """How a draft came from the feeds, so gather can tell whether an editor changed it."""

    at: dt.datetime
    checksum: str


class Issue(Content):
    """One edition of the newsletter, as kept in ``issues/<slug>.yaml``."""

    slug: str
    date: dt.date
    subject: str = Field(min_length=1, max_length=200)
    preheader: str = Field(default="", max_length=300)
    intro: str = ""  # Markdown
    roundup: Roundup | None = None
    teasers: list[Teaser] = []
    appeal: Appeal | None = None
    status: IssueStatus = "draft"
    approved_at: dt.datetime | None = None
    sent_at: dt.datetime | None = None
    gathered: Gathered | None = None

    @field_validator("slug", mode="before")
    @classmethod
    def _slug_from_date(cls, value: object) -> object:
        # YAML reads an unquoted 2024-10-25 as a date; as a slug it is meant as text.
        return value.isoformat() if isinstance(value, dt.date) else value

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.fullmatch(value):
            raise ValueError(f"must be lowercase letters, digits and hyphens (like 2024-10-25), got {value!r}")
        return value

    @field_validator("subject", "preheader")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return single_line(value)

    @model_validator(mode="after")
    def _has_content(self) -> Issue:
        if self.roundup is None and not self.teasers:
            raise ValueError("an issue needs a roundup or at least one teaser")
        return self

    def content_fields(self) -> dict[str, object]:
        """The editable content, for checksums: everything but status and bookkeeping."""
        return self.model_dump(mode="json", exclude={"status", "approved_at", "sent_at", "gathered"})


@dataclass(frozen=True)
class Recipient:
    """Who one message is for: what the per-recipient placeholders are replaced with."""

    email: str
    name: str = ""
    unsubscribe_url: str = ""
    # the footer's "Preferences" link; an email without one links the unsubscribe page
    preferences_url: str = ""
    reader: str = ""  # per_subscriber tracking's signed ledger row (tracking.reader_token)
