"""The bounce mailbox: where delivery status notifications arrive, read over IMAP
(``imaplib``, implicit TLS or STARTTLS) or from a local Maildir folder or mbox file.

A source yields the messages not processed yet and, once a message has been applied,
marks it so the next fetch skips it: IMAP flags it ``\\Seen`` and ``$NewsletterBounce``
(or moves it to ``processed_folder``), a Maildir or mbox moves it to a ``Processed``
folder or ``<file>.processed`` beside it; ``delete`` deletes it instead. A message the
reader could not use is ``skip``-ped: left where it is (IMAP flags it
``$NewsletterSkipped`` so it is reported once).
"""

from __future__ import annotations

import contextlib
import imaplib
import mailbox as stdlib_mailbox
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from newsletter.config import BounceImap
from newsletter.errors import MailboxError

DONE_KEYWORD: Final = "$NewsletterBounce"
SKIPPED_KEYWORD: Final = "$NewsletterSkipped"
PROCESSED: Final = "Processed"  # the Maildir folder processed messages are moved to


@dataclass(frozen=True)
class Letter:
    """One message of the mailbox: ``ref`` names it in reports (``INBOX uid 7``)."""

    key: str
    ref: str
    raw: bytes


class Source(Protocol):
    """A bounce mailbox, opened."""

    name: str

    def letters(self) -> Iterator[Letter]:
        """The messages not processed (nor skipped) yet, oldest first."""
        ...

    def done(self, letter: Letter) -> None:
        """``letter`` was applied: flag, move or delete it."""
        ...

    def skip(self, letter: Letter) -> None:
        """``letter`` could not be used: leave it in place."""
        ...

    def close(self) -> None: ...


# --- IMAP ------------------------------------------------------------------------------------


def _quote(folder: str) -> str:
    """An IMAP mailbox name as a quoted string (imaplib sends arguments as they are)."""
    if any(c in folder for c in "\r\n\0"):
        raise MailboxError(f"imap: folder name {folder!r} holds a line break")
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(data: object) -> str:
    parts = data if isinstance(data, list) else [data]
    return " ".join(p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p) for p in parts if p)


class ImapSource:
    """A folder on an IMAP server."""

    def __init__(
        self,
        config: BounceImap,
        username: str,
        password: str,
        *,
        delete: bool = False,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """Connect, log in and select the folder; MailboxError names what failed."""
        self.config, self.delete = config, delete
        self.server = f"{config.host}:{config.server_port}"
        self.name = f"imap {self.server} {config.folder}"
        self._expunge = False
        context = tls_context or ssl.create_default_context()
        try:
            if config.security == "tls":
                self._imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    config.host, config.server_port, ssl_context=context, timeout=config.timeout_seconds
                )
            else:
                self._imap = imaplib.IMAP4(config.host, config.server_port, timeout=config.timeout_seconds)
                if config.security == "starttls":
                    self._imap.starttls(ssl_context=context)
        except ssl.SSLError as exc:
            raise MailboxError(f"imap: TLS with {self.server} failed: {exc.reason or exc}") from None
        except (OSError, imaplib.IMAP4.error) as exc:
            raise MailboxError(f"imap: cannot reach {self.server}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            self._imap.login(username, password)
        except imaplib.IMAP4.error as exc:
            self._logout()
            raise MailboxError(f"imap: {self.server} refused the login of {username!r}: {exc}") from None
        except OSError as exc:
            self._logout()
            raise MailboxError(f"imap: {self.server} closed the connection at login: {exc}") from None
        status, data = self._imap.select(_quote(config.folder))
        if status != "OK":
            self._logout()
            raise MailboxError(f"imap: {self.server} has no folder {config.folder!r}: {_text(data)}")
        if config.processed_folder and not delete:
            # NO [ALREADYEXISTS] is fine; anything else shows when a message is copied there
            self._imap.create(_quote(config.processed_folder))

    def _command(self, what: str, *args: str) -> list[object]:
        try:
            status, data = self._imap.uid(what, *args)
        except (imaplib.IMAP4.error, OSError) as exc:
            raise MailboxError(f"imap: {self.server}: UID {what} failed: {exc}") from None
        if status != "OK":
            raise MailboxError(f"imap: {self.server}: UID {what} failed: {_text(data)}")
        return list(data)

    def letters(self) -> Iterator[Letter]:
        found = self._command("SEARCH", "UNDELETED", "UNKEYWORD", DONE_KEYWORD, "UNKEYWORD", SKIPPED_KEYWORD)
        uids = _text(found).split()
        for uid in sorted(uids, key=int):
            data = self._command("FETCH", uid, "(BODY.PEEK[])")
            raw = next((part[1] for part in data if isinstance(part, tuple) and len(part) == 2), None)
            if isinstance(raw, bytes):
                yield Letter(key=uid, ref=f"{self.config.folder} uid {uid}", raw=raw)

    def done(self, letter: Letter) -> None:
        if self.delete or self.config.processed_folder:
            if self.config.processed_folder and not self.delete:
                self._command("COPY", letter.key, _quote(self.config.processed_folder))
            self._command("STORE", letter.key, "+FLAGS.SILENT", "(\\Deleted)")
            self._expunge = True
        else:
            self._command("STORE", letter.key, "+FLAGS.SILENT", f"(\\Seen {DONE_KEYWORD})")

    def skip(self, letter: Letter) -> None:
        # A server that takes no keywords: the message stays unflagged, reported again.
        with contextlib.suppress(MailboxError):
            self._command("STORE", letter.key, "+FLAGS.SILENT", f"({SKIPPED_KEYWORD})")

    def _logout(self) -> None:
        with contextlib.suppress(imaplib.IMAP4.error, OSError, socket.timeout):
            self._imap.logout()

    def close(self) -> None:
        if self._expunge:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                self._imap.expunge()
        self._logout()


# --- Maildir and mbox --------------------------------------------------------------------------


class MaildirSource:
    """A Maildir folder; processed messages move to its ``Processed`` subfolder (a rename:
    atomic, and no copy or fsync per message)."""

    def __init__(self, path: Path, *, delete: bool = False) -> None:
        if not (path / "cur").is_dir() or not (path / "new").is_dir():
            raise MailboxError(f"bounces.path: {path} is not a Maildir folder (no cur/ and new/)")
        self.name, self.delete, self._path = str(path), delete, path
        self._files: dict[str, Path] = {}
        self._processed: Path | None = None

    def letters(self) -> Iterator[Letter]:
        for sub in ("new", "cur"):
            for path in (self._path / sub).iterdir():
                if not path.name.startswith("."):
                    self._files[path.name.partition(":")[0]] = path
        for key in sorted(self._files):  # a Maildir name starts with its delivery time
            try:
                raw = self._files[key].read_bytes()
            except FileNotFoundError:  # another reader took it meanwhile
                continue
            yield Letter(key=key, ref=f"{self.name} {key}", raw=raw)

    def done(self, letter: Letter) -> None:
        path = self._files.pop(letter.key)
        if self.delete:
            path.unlink(missing_ok=True)
            return
        if self._processed is None:
            box = stdlib_mailbox.Maildir(self._path, factory=None, create=False)
            if PROCESSED not in box.list_folders():
                box.add_folder(PROCESSED)
            self._processed = self._path / f".{PROCESSED}"
        info = path.name.partition(":")[2] or "2,S"
        os.replace(path, self._processed / "cur" / f"{letter.key}:{info}")

    def skip(self, letter: Letter) -> None:
        return None

    def close(self) -> None:
        return None


class MboxSource:
    """An mbox file, locked while it is read; processed messages move to
    ``<file>.processed``."""

    def __init__(self, path: Path, *, delete: bool = False) -> None:
        if not path.is_file():
            raise MailboxError(f"bounces.path: {path} does not exist (give a Maildir folder or an mbox file)")
        with path.open("rb") as handle:
            start = handle.read(5)
        if start and start != b"From ":
            raise MailboxError(f"bounces.path: {path} is not an mbox file (it does not start with 'From ')")
        self.name, self.delete, self._path = str(path), delete, path
        self._box = stdlib_mailbox.mbox(path, create=False)
        try:
            self._box.lock()
        except stdlib_mailbox.ExternalClashError:
            raise MailboxError(f"bounces.path: {path} is locked by another program; try again later") from None
        self._changed = False

    def letters(self) -> Iterator[Letter]:
        for key in list(self._box.keys()):
            yield Letter(key=str(key), ref=f"{self.name} message {int(key) + 1}", raw=self._box.get_bytes(key))

    def done(self, letter: Letter) -> None:
        if not self.delete:
            processed = stdlib_mailbox.mbox(self._path.with_name(self._path.name + ".processed"), create=True)
            try:
                processed.lock()
                processed.add(letter.raw)
                processed.flush()
            finally:
                processed.unlock()
                processed.close()
        self._box.discard(int(letter.key))  # type: ignore[arg-type]  # an mbox is keyed by int, not as typeshed says
        self._changed = True

    def skip(self, letter: Letter) -> None:
        return None

    def close(self) -> None:
        try:
            if self._changed:
                self._box.flush()
        finally:
            self._box.unlock()
            self._box.close()


def open_path(path: Path, *, delete: bool = False) -> Source:
    """A Maildir folder or an mbox file, whichever ``path`` is."""
    if path.is_dir():
        return MaildirSource(path, delete=delete)
    return MboxSource(path, delete=delete)
