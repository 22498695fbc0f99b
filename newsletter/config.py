"""Load and validate config.yaml into one ``Settings`` object.

Unknown keys are errors that name the key path and the file. Relative paths, given or
default, are resolved against the config file's folder, never the current directory. Secrets never live in the file: it names the
environment variables that hold them, and ``Settings.secret`` reads them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from newsletter.errors import ConfigError
from newsletter.yamlfile import read_mapping, validate

CONFIG_ENV = "NEWSLETTER_CONFIG"
DATABASE_URL_ENV = "NEWSLETTER_DATABASE_URL"
DEFAULT_CONFIG = Path("config.yaml")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EnvName = Annotated[str, Field(pattern=_ENV_NAME.pattern)]


def _under_config_folder(value: Path, info: ValidationInfo) -> Path:
    """A relative path is relative to the config file's folder (``base`` in the context)."""
    base = (info.context or {}).get("base")
    return value if base is None or value.is_absolute() else Path(base) / value


def _local_feed(value: str, info: ValidationInfo) -> str:
    """A feed given as a relative local path is relative to the config file's folder."""
    if "://" in value:
        return value
    return str(_under_config_folder(Path(value), info))


# A path key: relative to the config file, defaults included (hence validate_default).
ConfigPath = Annotated[Path, AfterValidator(_under_config_folder), Field(validate_default=True)]
FeedLocation = Annotated[str, AfterValidator(_local_feed)]


def _paths_section() -> Any:
    """The default of a section that holds a path: built from ``{}`` when the config is
    validated (not once at import), so its default paths are resolved like given ones."""
    return Field(default_factory=dict, validate_default=True)


class Section(BaseModel):
    """A config section: unknown keys are rejected, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_newline(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError("must be a single line (it becomes an email header)")
    return value


class SocialLink(Section):
    name: str
    url: str


class Logo(Section):
    src: str
    alt: str
    width: int = Field(default=180, gt=0, le=600)


class Publication(Section):
    """Who sends the newsletter and what every email must say about them."""

    name: str = Field(min_length=1)
    tagline: str = ""
    language: str = "en"
    timezone: str = "UTC"
    website_url: str
    public_url: str  # base for unsubscribe, subscribe, archive and "view in browser" links
    organisation: str
    postal_address: str = Field(min_length=1)  # CAN-SPAM: required in every email
    why_you_get_this: str = "You are receiving this email because you subscribed to it."
    logo: Logo | None = None
    social: list[SocialLink] = []
    accent_color: str = Field(default="#b3261e", pattern=r"^#[0-9a-fA-F]{6}$")

    @field_validator("website_url", "public_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("postal_address")
    @classmethod
    def _postal(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty (CAN-SPAM requires a postal address)")
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        return check_timezone(value)


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


class SenderIdentity(Section):
    """The From, Reply-To and list headers."""

    from_name: str
    from_address: str
    reply_to: str | None = None
    list_id: str | None = None  # e.g. "weekly.news.example.org"
    unsubscribe_mailto: str | None = None  # optional second List-Unsubscribe entry

    @field_validator("from_name", "from_address", "reply_to", "list_id", "unsubscribe_mailto")
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        return value if value is None else _no_newline(value)


class Templates(Section):
    dir: ConfigPath = Path("templates")
    roundup_body: Literal["full", "excerpt"] = "full"
    roundup_excerpt_words: int = Field(default=120, gt=0)
    # Gather gives a teaser or the round-up no image narrower than this (where the feed or
    # the HTML says the width): a 40 px avatar must not be stretched to 600 px.
    min_image_width: int = Field(default=300, ge=0)


class Output(Section):
    dir: ConfigPath = Path("build")


class Limits(Section):
    html_warn_bytes: int = Field(default=51_200, gt=0)
    html_max_bytes: int = Field(default=102_400, gt=0)

    @model_validator(mode="after")
    def _order(self) -> Limits:
        if self.html_warn_bytes > self.html_max_bytes:
            raise ValueError("html_warn_bytes must not exceed html_max_bytes")
        return self


class RenderCheck(Section):
    """The render check in Chromium (`newsletter check`) and when build and send run it:
    auto = when Chromium is installed (else one line says it was skipped), required =
    refuse without it, off = never."""

    chromium: Path = Path("/usr/bin/chromium")
    on_build: Literal["auto", "required", "off"] = "auto"
    on_send: Literal["auto", "required", "off"] = "auto"


class Utm(Section):
    """UTM parameters added to links that point at the publication's own domains."""

    enabled: bool = True
    source: str = "newsletter"
    medium: str = "email"
    campaign: str = "{slug}"  # {slug} and {date} are filled in per issue
    domains: list[str] = []  # empty: the website_url's host


class RoundupSource(Section):
    feed: FeedLocation
    # Every key given must match: title_prefix and category ignore case.
    match: dict[Literal["title_prefix", "category", "title_regex"], str] = {"title_prefix": "Diplomacy Watch:"}
    body: Literal["full", "excerpt"] = "full"
    max_age_days: int = Field(default=7, gt=0)
    label: str | None = None  # the section label shown above it; default: its first category

    @field_validator("match")
    @classmethod
    def _match(
        cls, value: dict[Literal["title_prefix", "category", "title_regex"], str]
    ) -> dict[Literal["title_prefix", "category", "title_regex"], str]:
        if not value:
            raise ValueError("needs title_prefix, category or title_regex")
        if "title_regex" in value:
            try:
                re.compile(value["title_regex"])
            except re.error as exc:
                raise ValueError(f"title_regex is not a valid regular expression ({exc})") from None
        return value


class TeaserSource(Section):
    feeds: list[FeedLocation] = []
    count: int = Field(default=5, ge=0, le=50)
    max_age_days: int = Field(default=7, gt=0)
    include_sections: list[str] = []
    exclude_sections: list[str] = []
    excerpt_words: int = Field(default=45, gt=0)
    on_feed_error: Literal["fail", "warn"] = "warn"


class Fetching(Section):
    timeout_seconds: float = Field(default=20.0, gt=0)  # the whole fetch: connect to last byte
    max_bytes: int = Field(default=10_000_000, gt=0)  # decoded bytes, capped inside the decoder
    cache_dir: ConfigPath = Path(".cache/feeds")
    user_agent: str | None = None


class Sources(Section):
    roundup: RoundupSource
    teasers: TeaserSource = TeaserSource()
    no_roundup: Literal["skip", "teasers_only"] = "skip"
    fetch: Fetching = _paths_section()
    max_title_chars: int = Field(default=200, ge=20)  # longer titles are cut at a word
    # The publisher's own hosts (and their subdomains), known to serve https: http links
    # and images from feeds on them are upgraded. Nothing else is guessed.
    https_domains: list[str] = []

    @field_validator("https_domains")
    @classmethod
    def _https_domains(cls, value: list[str]) -> list[str]:
        hosts = []
        for host in value:
            host = host.strip().lower().rstrip(".")
            if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", host):
                raise ValueError(f"{host!r} is not a host name (like news.example.org)")
            hosts.append(host)
        return hosts


class Database(Section):
    url: str = "sqlite:///newsletter.db"
    auto_upgrade: bool = False
    # how long a send rides through database blips (a restart, a failover, a full disk)
    # before it stops and names the batches whose outcome it could not record
    retry_seconds: float = Field(default=60.0, ge=0)


class OutboxBackend(Section):
    dir: ConfigPath = Path("outbox")


class SendgridBackend(Section):
    api_key_env: EnvName = "SENDGRID_API_KEY"
    host: str = "https://api.sendgrid.com"
    batch_size: int = Field(default=1000, gt=0, le=1000)
    timeout_seconds: float = Field(default=30.0, gt=0)
    sandbox: bool = False
    categories: list[str] = Field(default=["newsletter"], max_length=10)  # SendGrid's limits

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for category in value:
            if not category.strip():
                raise ValueError("a category must not be empty")
            if len(category) > 255:
                raise ValueError(f"category {category[:40]!r}... is over SendGrid's 255 characters")
            if any(c in category for c in "\r\n"):
                raise ValueError(f"category {category!r} must be a single line")
            if category in seen:
                raise ValueError(f"category {category!r} is listed twice (SendGrid wants unique categories)")
            seen.add(category)
        return value


class SmtpBackend(Section):
    host: str = "localhost"
    port: int = Field(default=587, gt=0, lt=65536)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    connections: int = Field(default=4, gt=0, le=64)
    timeout_seconds: float = Field(default=30.0, gt=0)


class Delivery(Section):
    backend: Literal["outbox", "smtp", "sendgrid"] = "outbox"
    outbox: OutboxBackend = _paths_section()
    sendgrid: SendgridBackend = SendgridBackend()
    smtp: SmtpBackend = SmtpBackend()
    batch_size: int = Field(default=500, gt=0, le=1000)
    concurrency: int = Field(default=4, gt=0, le=64)
    max_retries: int = Field(default=6, ge=0)
    # A claimed batch's owner renews its lease while it works; another process calls the
    # batch ambiguous only once the lease ran out (its owner died).
    lease_seconds: float = Field(default=60.0, ge=1)
    ambiguous_grace: float = Field(default=60.0, ge=0)  # minutes to wait for provider events
    # consecutive batches with unknown outcomes after which a run stops (the provider's
    # answers are not arriving: sending more would only make more unknowns)
    max_ambiguous_batches: int = Field(default=3, gt=0)
    # after SIGTERM or Ctrl-C: how long requests already sent may take to answer before
    # their recipients are recorded ambiguous and the process exits (below systemd's
    # TimeoutStopSec in deploy/)
    shutdown_seconds: float = Field(default=20.0, ge=0)
    test_recipients: list[str] = []  # the editors' addresses for "send test"


class PreviewAuth(Section):
    """Who may use the editors' preview. ``credentials`` (the default): every request
    needs the token or the editors' password, whatever its Host or address. ``local``:
    a server bound to loopback also lets in requests that come straight from this
    machine with no forwarding headers (an editor's laptop; see web/security.py)."""

    access: Literal["credentials", "local"] = "credentials"
    token_env: EnvName | None = "NEWSLETTER_PREVIEW_TOKEN"
    username: str | None = None
    password_env: EnvName | None = None


class SendgridWebhook(Section):
    public_key_env: EnvName = "SENDGRID_WEBHOOK_PUBLIC_KEY"  # the ECDSA key, base64 DER
    max_age_seconds: int = Field(default=300, gt=0)  # the replay window
    max_body_bytes: int = Field(default=5_000_000, gt=0)


class Web(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, gt=0, lt=65536)
    secret_key_env: EnvName = "NEWSLETTER_SECRET_KEY"  # signs CSRF tokens; required to serve
    preview: PreviewAuth = PreviewAuth()
    sendgrid_webhook: SendgridWebhook = SendgridWebhook()
    subscribe_rate_per_hour: int = Field(default=10, gt=0)  # sign-ups per client address
    preferences_rate_per_hour: int = Field(default=30, gt=0)  # preferences-page actions per client address
    # confirmation emails to one address per confirmation_window_minutes; the window is
    # at most the links' three days (unconfirmed sign-ups are forgotten after that)
    confirmations_per_address: int = Field(default=1, gt=0)
    confirmation_window_minutes: int = Field(default=60, gt=0, le=3 * 24 * 60)
    max_form_bytes: int = Field(default=16_384, gt=0)
    # reverse proxies (addresses or networks) whose X-Forwarded-For/-Proto are believed
    trusted_proxies: list[str] = []

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (list each proxy; no '*')") from None
        return [entry.strip() for entry in value]

    @model_validator(mode="after")
    def _local_without_proxies(self) -> Web:
        if self.preview.access == "local" and self.trusted_proxies:
            raise ValueError(
                "preview.access local is for a server no proxy forwards to; "
                "with trusted_proxies use access: credentials"
            )
        return self


class BounceImap(Section):
    """The bounce mailbox on an IMAP server; the login comes from the environment."""

    host: str
    port: int | None = Field(default=None, gt=0, lt=65536)  # default: 993 for tls, 143 otherwise
    security: Literal["tls", "starttls", "none"] = "tls"
    username_env: EnvName = "BOUNCES_IMAP_USERNAME"
    password_env: EnvName = "BOUNCES_IMAP_PASSWORD"
    folder: str = "INBOX"
    # where a processed message goes; none: it stays, flagged \Seen and $NewsletterBounce
    processed_folder: str | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)

    @property
    def server_port(self) -> int:
        return self.port or (993 if self.security == "tls" else 143)


class Bounces(Section):
    """Delivery status notifications (bounces) for the SMTP backend: the envelope sender
    that names each delivery (VERP), where the DSNs arrive, and when soft bounces (from
    DSNs and SendGrid's ``blocked``) mark an address bounced."""

    # e.g. bounces@news.example.org: each message's envelope sender becomes
    # bounces+<signed delivery token>@news.example.org; none: the From address, no VERP
    return_path: str | None = None
    signing_key_env: EnvName = "NEWSLETTER_SECRET_KEY"  # signs the delivery tokens
    imap: BounceImap | None = None
    path: Annotated[Path, AfterValidator(_under_config_folder)] | None = (
        None  # a Maildir folder or an mbox file instead of IMAP
    )
    delete_processed: bool = False  # delete (expunge) processed DSNs instead of flagging/moving them
    soft_limit: int = Field(default=3, gt=0)  # soft bounces within the window that mark an address bounced
    soft_window_days: int = Field(default=30, gt=0)

    @field_validator("return_path")
    @classmethod
    def _return_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _no_newline(value)
        local, _, domain = value.rpartition("@")
        if not local or not domain or "+" in local or not value.isascii():
            raise ValueError("must be a plain ASCII address without '+', like bounces@news.example.org")
        return value

    @model_validator(mode="after")
    def _one_mailbox(self) -> Bounces:
        if self.imap is not None and self.path is not None:
            raise ValueError("give imap or path, not both")
        return self


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class WeeklyTime(Section):
    """A day of the week and a local wall-clock time, e.g. {day: fri, time: "09:00"}."""

    day: str
    time: str

    @field_validator("day")
    @classmethod
    def _day(cls, value: str) -> str:
        day = value.strip().lower()[:3]
        if day not in WEEKDAYS or not value.strip().lower().startswith(day):
            raise ValueError(f"unknown day {value!r}: use one of {', '.join(WEEKDAYS)}")
        return day

    @field_validator("time")
    @classmethod
    def _time(cls, value: str) -> str:
        match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", value.strip())
        if not match:
            raise ValueError(f'invalid time {value!r}: use 24-hour HH:MM, e.g. "09:00"')
        return f"{int(match.group(1)):02d}:{match.group(2)}"

    @property
    def hour(self) -> int:
        return int(self.time[:2])

    @property
    def minute(self) -> int:
        return int(self.time[3:])


class Schedule(Section):
    """When the weekly job runs, and whether an editor must approve each issue."""

    timezone: str | None = None  # default: publication.timezone
    mode: Literal["auto", "approve"] = "auto"
    send: WeeklyTime = WeeklyTime(day="fri", time="09:00")
    draft: WeeklyTime | None = None  # approve mode: gather and send the editors a test
    misfire_grace_minutes: int = Field(default=120, gt=0)
    notify_editors: bool = True  # tell the editors when a week is skipped or a send gives up
    # an unfinished send is resumed every resume_every minutes until settled or until
    # resume_deadline hours after its audience was frozen; then the editors are told
    resume_every: int = Field(default=15, gt=0)  # minutes
    resume_deadline: float = Field(default=24.0, gt=0)  # hours

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)

    @model_validator(mode="after")
    def _draft_in_approve_mode(self) -> Schedule:
        if self.mode == "approve" and self.draft is None:
            raise ValueError('mode approve needs a draft time, e.g. draft: {day: thu, time: "15:00"}')
        return self


class Welcome(Section):
    """The welcome mail sent once to each subscriber whose web sign-up is confirmed."""

    enabled: bool = True
    # {name}: the publication's name
    subject: Annotated[str, AfterValidator(_no_newline)] = Field(default="Welcome to {name}", min_length=1)
    max_attempts: int = Field(default=5, gt=0)  # `newsletter welcome retry` gives up after these
    retry_within_days: int = Field(default=7, gt=0)  # nor retries a welcome older than this


TrackingMode = Literal["off", "aggregate", "per_subscriber"]


class Tracking(Section):
    """What the emails track (README, "Tracking"). ``aggregate`` counts per issue and link
    and keeps no subscriber; ``per_subscriber`` keeps who opened or clicked; ``off``
    tracks nothing. Unsubscribe, archive and preferences links are never tracked."""

    clicks: TrackingMode = "aggregate"
    opens: TrackingMode = "off"

    def anonymous_events(self) -> frozenset[str]:
        """The events kept without their reader: opens and clicks not tracked per subscriber."""
        return frozenset(
            event for event, mode in (("open", self.opens), ("click", self.clicks)) if mode != "per_subscriber"
        )


class Settings(Section):
    """Everything config.yaml says, with paths made absolute."""

    publication: Publication
    sender: SenderIdentity
    templates: Templates = _paths_section()
    output: Output = _paths_section()
    limits: Limits = Limits()
    render_check: RenderCheck = RenderCheck()
    utm: Utm = Utm()
    tracking: Tracking = Tracking()
    issues_dir: ConfigPath = Path("issues")
    sources: Sources | None = None
    database: Database = Database()
    delivery: Delivery = _paths_section()
    web: Web = Web()
    schedule: Schedule = Schedule()
    bounces: Bounces = _paths_section()
    welcome: Welcome = Welcome()
    editors: list[str] = []  # addresses that get notices (skipped weeks, failures)

    # Where the file was read from; not a key in the file.
    config_path: Path = Field(default=Path("config.yaml"), exclude=True)

    def secret(self, env_name: str | None, what: str) -> str:
        """Read a secret from the environment variable ``env_name``; never log it."""
        value = os.environ.get(env_name or "")
        if not env_name or not value:
            raise ConfigError(
                f"{self.config_path}: {what} is read from the environment variable "
                f"{env_name or '(none named)'}, which is not set"
            )
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.publication.timezone)

    @property
    def schedule_zone(self) -> ZoneInfo:
        return ZoneInfo(self.schedule.timezone or self.publication.timezone)


def config_location(explicit: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """``--config`` wins, then ``NEWSLETTER_CONFIG``, then ./config.yaml."""
    env = os.environ if env is None else env
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the config file; ``NEWSLETTER_DATABASE_URL`` overrides the database."""
    env = os.environ if env is None else env
    location = config_location(path, env)
    data = read_mapping(location, ConfigError)
    if env.get(DATABASE_URL_ENV):
        database = dict(data.get("database") or {})
        database["url"] = env[DATABASE_URL_ENV]
        data["database"] = database
    data["config_path"] = str(location)
    return validate(Settings, data, location, ConfigError, context={"base": location.resolve().parent})
