"""The one exception tree of the newsletter: every error a user can cause or fix.

    NewsletterError                 base; ``str(err)`` is one line a user can act on
    ├── ConfigError                 config.yaml or an environment variable it names
    ├── IssueFileError              issues/<slug>.yaml
    │   └── IssueKeptError          gather would replace an editor's issue file
    ├── TemplateError               a template in the templates directory
    ├── BuildError                  a rendered email that must not go out (size, checks)
    ├── HeaderError                 a header value that would inject another header
    ├── FeedError                   a feed that cannot be fetched or parsed
    │   └── NoRoundupError          the feeds hold no new round-up this week
    ├── SubscriberError             a subscriber, an import file or its rows
    ├── StoreError                  the database: unreachable, locked, behind on migrations
    │   └── TransientStoreError     a blip another attempt may cure (connection lost, busy, full)
    ├── DeliveryError               a sender backend failed; nothing was accepted, retry
    │   ├── PermanentDeliveryError  retrying cannot help (400/401/403/413)
    │   └── AmbiguousDeliveryError  the request may have arrived: never retried blindly
    ├── SendError                   the send job: nothing to send, issue state, leftovers
    │   └── BatchLostError          a sending process no longer owns its batch (fencing)
    ├── MailboxError                the bounce mailbox: unreachable, login refused, no folder
    └── ScheduleError               the weekly job's schedule

The CLI maps the tree to exit codes in one place (``cli.main``); the web layer maps it to
HTTP statuses with each class's ``status``.
"""

from __future__ import annotations


class NewsletterError(Exception):
    """Base class: the message is shown to the user as is, without a traceback."""

    status: int = 400
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(NewsletterError):
    """config.yaml is missing, malformed or invalid, or a secret is not in the environment."""

    exit_code = 2


class IssueFileError(NewsletterError):
    """An issue file is missing, malformed or invalid."""

    exit_code = 2


class IssueKeptError(IssueFileError):
    """An issue file gather must not replace: an editor's work (approved, sent, edited or
    written by hand) or a file it cannot read. The caller says how to override it."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}; not replaced")
        self.path = path
        self.reason = reason


class TemplateError(NewsletterError):
    """A template is missing or fails to render."""

    exit_code = 2


class BuildError(NewsletterError):
    """The built email breaks a hard limit (Gmail clipping, missing unsubscribe, ...)."""


class HeaderError(NewsletterError):
    """A header value holds a line break (header injection) or cannot be encoded."""


class FeedError(NewsletterError):
    """A feed is unreachable, too large, malformed or empty."""


class NoRoundupError(FeedError):
    """No new round-up this week: the weekly job skips the week (or sends teasers only)."""

    exit_code = 3


class SubscriberError(NewsletterError):
    """A subscriber address, an import file or one of its rows is invalid."""


class StoreError(NewsletterError):
    """The database is unreachable, locked, or behind on its migrations."""

    status = 503


class TransientStoreError(StoreError):
    """A database error that another attempt may cure: the connection was lost (a
    restart, a failover, ``pg_terminate_backend``), the server is starting or shutting
    down, a serialization failure, SQLite busy past its timeout or its disk full. The send
    job retries these for ``database.retry_seconds``; elsewhere they are a StoreError."""


class DeliveryError(NewsletterError):
    """A sender backend failed in a way that retrying may cure.

    ``retry_after`` is the number of seconds the service asked us to wait, if it said.
    """

    status = 502

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """A sender backend refused the request itself: retrying will not help."""


class AmbiguousDeliveryError(DeliveryError):
    """The request may have reached the service and been accepted: a timeout after the
    body was sent, a connection reset before the answer, an SMTP drop after DATA. Its
    recipients are recorded as ambiguous, never retried blindly."""


class SendError(NewsletterError):
    """The send job cannot start, or finished with recipients left unsent."""


class BatchLostError(SendError):
    """A claimed batch is no longer this process's: its lease ran out (a paused or frozen
    process) and another process or an operator took it over, which bumped its fencing
    token. Its owner must not send or record anything more for it."""

    def __init__(self, batch_id: str, generation: int, found: str) -> None:
        super().__init__(f"batch {batch_id} is no longer this process's (fencing token {generation}; {found})")
        self.batch_id = batch_id
        self.generation = generation
        self.found = found


class MailboxError(NewsletterError):
    """The bounce mailbox cannot be read: the IMAP server is unreachable or refuses the
    login, the folder is missing, the Maildir or mbox path is not one."""

    status = 502


class ScheduleError(NewsletterError):
    """The schedule in config.yaml is invalid, or a scheduled step failed."""

    exit_code = 2
