"""The SMTP backend: one message per recipient over ``connections`` parallel SMTP
connections (STARTTLS, implicit TLS or plain), each kept open across messages and
batches and reopened when the server drops it. Per-recipient outcomes: 5xx -> rejected,
4xx and connections lost before the message was handed over -> retry; a connection
lost after the message went out (after DATA, before the server's answer) -> ambiguous,
never retried blindly; a login or TLS failure stops the send. With a bounce address
(``bounces.return_path``), each message of a send names its delivery in its envelope
sender and Message-ID (``verp``), so ``bounces`` can match the DSNs that come back.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from newsletter.config import Settings, SmtpBackend
from newsletter.errors import DeliveryError, HeaderError, PermanentDeliveryError
from newsletter.senders.base import Batch, BatchResult, Delivery, SenderBase
from newsletter.senders.mime import MessageTemplate, envelope_address
from newsletter.verp import DeliveryTokens

# Messages a connection marks started in one ledger write before sending them: at most
# these, a connection, are ambiguous after a kill beyond the ones that were answered.
STARTED_AHEAD = 16


class _Lost(Exception):
    """The connection broke; ``delivered_maybe``: after the message was handed over."""

    def __init__(self, reason: str, delivered_maybe: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered_maybe = delivered_maybe


@dataclass
class _Outcome:
    sent: list[int]
    rejected: dict[int, str]
    retry: dict[int, str]
    ambiguous: dict[int, str]
    error: DeliveryError | None = None  # why the rest of the chunk was not attempted


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {' '.join(text.split())}"


def _dot_stuffed(data: bytes) -> bytes:
    """``data`` as DATA sends it (RFC 5321 4.5.2): CRLF lines, a leading dot doubled, then
    the final dot. smtplib's own regex for this costs more than the rest of a message."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\n.", b"\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


class SmtpSender(SenderBase):
    """Sends through an SMTP server; thread-safe, connections live in the pool's threads."""

    name = "smtp"
    per_message = True

    def __init__(
        self,
        config: SmtpBackend = SmtpBackend(),
        *,
        username: str | None = None,
        password: str | None = None,
        max_batch_size: int = 500,
        tls_context: ssl.SSLContext | None = None,
        return_path: str | None = None,
        tokens: DeliveryTokens | None = None,
    ) -> None:
        """``tls_context``: how the server's certificate is checked (default: the system's
        trusted CAs, hostname checked); tests pass one that trusts their own CA.
        ``return_path``: the envelope sender (default: the From address); with ``tokens``,
        a ledger batch's messages get ``local+<token>@domain`` and a Message-ID naming
        their delivery."""
        self.host, self.port, self.security = config.host, config.port, config.security
        self.timeout = config.timeout_seconds
        self.connections = config.connections
        self.max_batch_size = max_batch_size
        self._username, self._password = username, password
        self._tls = tls_context or ssl.create_default_context()
        self._pool = ThreadPoolExecutor(max_workers=self.connections, thread_name_prefix="smtp")
        self._local = threading.local()
        self._open: set[smtplib.SMTP] = set()
        self._lock = threading.Lock()
        self._fatal: PermanentDeliveryError | None = None
        self.return_path, self._tokens = return_path, tokens

    @classmethod
    def from_settings(cls, settings: Settings, tls_context: ssl.SSLContext | None = None) -> SmtpSender:
        config = settings.delivery.smtp
        username = password = None
        if config.username_env:
            username = settings.secret(config.username_env, "the SMTP user name")
            password = settings.secret(config.password_env, "the SMTP password")
        bounces = settings.bounces
        tokens = None
        if bounces.return_path:
            tokens = DeliveryTokens(settings.secret(bounces.signing_key_env, "the bounce tokens' signing key"))
        return cls(
            config,
            username=username,
            password=password,
            max_batch_size=settings.delivery.batch_size,
            tls_context=tls_context,
            return_path=bounces.return_path,
            tokens=tokens,
        )

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    # --- connections --------------------------------------------------------------------

    def _connect(self) -> smtplib.SMTP:
        """A new, logged-in connection; DeliveryError if the server cannot be reached,
        PermanentDeliveryError if TLS or the login fails."""
        conn: smtplib.SMTP | None = None
        try:
            if self.security == "tls":
                conn = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self._tls)
            else:
                conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            conn.ehlo()
            if self.security == "starttls":
                conn.starttls(context=self._tls)
                conn.ehlo()
            if self._username is not None:
                conn.login(self._username, self._password or "")
        except smtplib.SMTPAuthenticationError as exc:
            self._discard(conn)
            raise PermanentDeliveryError(
                f"smtp: {self.server} refused the login of {self._username!r}: {_reply(exc.smtp_code, exc.smtp_error)}"
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            self._discard(conn)
            what = "STARTTLS" if self.security == "starttls" and "STARTTLS" in str(exc) else "AUTH"
            raise PermanentDeliveryError(f"smtp: {self.server} does not offer {what} ({exc})") from None
        except (ssl.SSLCertVerificationError, ssl.CertificateError) as exc:
            self._discard(conn)
            raise PermanentDeliveryError(
                f"smtp: TLS with {self.server} failed: {getattr(exc, 'verify_message', None) or exc}"
            ) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            self._discard(conn)
            raise DeliveryError(f"smtp: {self.server} closed the connection during TLS ({exc})") from None
        except ssl.SSLError as exc:
            self._discard(conn)
            raise PermanentDeliveryError(f"smtp: TLS with {self.server} failed: {exc.reason or exc}") from None
        except smtplib.SMTPResponseException as exc:  # e.g. a 421/554 greeting
            self._discard(conn)
            raise DeliveryError(
                f"smtp: {self.server} refused the connection: {_reply(exc.smtp_code, exc.smtp_error)}"
            ) from None
        except smtplib.SMTPException as exc:  # e.g. no AUTH mechanism in common
            self._discard(conn)
            if self._username is not None and "auth" in str(exc).lower():
                raise PermanentDeliveryError(f"smtp: cannot log in to {self.server}: {exc}") from None
            raise DeliveryError(f"smtp: {self.server}: {exc}") from None
        except OSError as exc:  # refused, unreachable, DNS, timeout
            self._discard(conn)
            raise DeliveryError(f"smtp: cannot reach {self.server}: {exc.strerror or exc}") from None
        with self._lock:
            self._open.add(conn)
        return conn

    def check(self) -> None:
        """Connect, greet, start TLS and log in once, as a send would, then quit."""
        conn = self._connect()
        self._discard(conn)

    def _discard(self, conn: smtplib.SMTP | None) -> None:
        if conn is None:
            return
        with self._lock:
            self._open.discard(conn)
        with contextlib.suppress(OSError):
            conn.close()

    def _connection(self) -> smtplib.SMTP:
        conn: smtplib.SMTP | None = getattr(self._local, "conn", None)
        if conn is None or conn.sock is None:
            self._discard(conn)
            if self._fatal is not None:
                raise self._fatal  # do not try to log in again with credentials that failed
            try:
                conn = self._connect()
            except PermanentDeliveryError as exc:
                self._fatal = exc
                raise
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        self._discard(getattr(self._local, "conn", None))
        self._local.conn = None

    # --- one message ----------------------------------------------------------------------

    def _transaction(
        self, conn: smtplib.SMTP, sender: str, to: str, data: bytes, options: Sequence[str]
    ) -> tuple[str, int, str] | None:
        """MAIL, RCPT, DATA. None when accepted, else (command, code, reply) of the
        refusal. Raises _Lost when the connection breaks."""
        stage_sent = False
        try:
            code, reply = conn.mail(sender, list(options))
            if code != 250:
                return "MAIL", *self._refused(conn, code, reply)
            code, reply = conn.rcpt(to)
            if code not in (250, 251):
                return "RCPT", *self._refused(conn, code, reply)
            code, reply = conn.docmd("data")
            if code != 354:
                return "DATA", *self._refused(conn, code, reply)
            stage_sent = True
            conn.send(_dot_stuffed(data))
            code, reply = conn.getreply()
            if code != 250:
                return "DATA", *self._refused(conn, code, reply)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _Lost(f"connection to {self.server} lost: {exc}", stage_sent) from None
        return None

    def _refused(self, conn: smtplib.SMTP, code: int, reply: bytes | str) -> tuple[int, str]:
        if code == 421:
            conn.close()  # the server is closing this connection
        else:
            try:
                conn.rset()
            except (smtplib.SMTPException, OSError):
                conn.close()
        return code, _reply(code, reply)

    def _send_chunk(
        self, template: MessageTemplate, sender: str, deliveries: Sequence[Delivery], batch: Batch
    ) -> _Outcome:
        out = _Outcome([], {}, {}, {})
        tokens = self._tokens if batch.ledger else None
        recorder = batch.recorder
        for index, delivery in enumerate(deliveries):
            # every STARTED_AHEAD messages, the next ones are marked started together
            ahead = STARTED_AHEAD if index % STARTED_AHEAD == 0 else 1
            if recorder is not None and not recorder.may_send([d.key for d in deliveries[index : index + ahead]]):
                for rest in deliveries[index:]:
                    out.retry[rest.key] = "not sent: the send stopped, or no longer owns this batch"
                return out
            try:
                envelope, message_id = sender, None
                if tokens is not None:
                    envelope = tokens.return_path(sender, delivery.key)
                    message_id = tokens.message_id(delivery.key, template.domain)
                data = template.render(delivery.recipient, message_id=message_id)
                to = envelope_address(delivery.recipient.email)
            except HeaderError as exc:
                out.rejected[delivery.key] = str(exc)
                if recorder is not None:
                    recorder.record(delivery.key, "rejected", str(exc))
                continue
            for attempt in (1, 2):
                try:
                    conn = self._connection()
                    options = ["BODY=8BITMIME"] if not template.is_ascii and conn.has_extn("8bitmime") else []
                    if not to.isascii():
                        options.append("SMTPUTF8")
                    refusal = self._transaction(conn, envelope, to, data, options)
                except _Lost as lost:
                    self._drop()
                    # Lost before the message was handed over (an idle connection the
                    # server closed): nothing was delivered, reconnect and go again once.
                    if attempt == 1 and not lost.delivered_maybe:
                        continue
                    if lost.delivered_maybe:
                        # The message went out; the server may have queued it before the
                        # connection broke. Another copy could be a duplicate.
                        out.ambiguous[delivery.key] = f"{lost.reason} (after the message was sent)"
                        if recorder is not None:
                            recorder.record(delivery.key, "ambiguous", out.ambiguous[delivery.key])
                    else:
                        out.retry[delivery.key] = lost.reason
                    break
                except DeliveryError as exc:  # cannot (re)connect: leave the rest
                    out.error = exc
                    for rest in deliveries[index:]:
                        out.retry[rest.key] = str(exc)
                    return out
                if refusal is None:
                    out.sent.append(delivery.key)
                    if recorder is not None:
                        recorder.record(delivery.key, "sent")
                    break
                command, code, reply = refusal
                if code == 421 and attempt == 1:
                    self._drop()  # the server is closing the connection: a new one
                    continue
                if command == "MAIL" and 500 <= code < 600:
                    # The sender is refused: no recipient will get through.
                    out.error = PermanentDeliveryError(f"smtp: {self.server} refused the sender {sender}: {reply}")
                    for rest in deliveries[index:]:
                        out.retry[rest.key] = str(out.error)
                    return out
                if 500 <= code < 600:
                    out.rejected[delivery.key] = reply
                    if recorder is not None:
                        recorder.record(delivery.key, "rejected", reply)
                else:
                    out.retry[delivery.key] = reply
                break
        return out

    # --- the Sender interface ---------------------------------------------------------

    def send(self, batch: Batch) -> BatchResult:
        deliveries = list(batch.deliveries)
        if not deliveries:
            return BatchResult()
        template = MessageTemplate(batch.email, linesep="\r\n")
        try:
            sender = envelope_address(self.return_path or batch.email.from_address)
        except HeaderError as exc:
            what = "bounces.return_path" if self.return_path else "sender.from_address"
            raise PermanentDeliveryError(f"smtp: {what}: {exc}") from None
        size = -(-len(deliveries) // self.connections)
        chunks = [deliveries[i : i + size] for i in range(0, len(deliveries), size)]
        futures = [self._pool.submit(self._send_chunk, template, sender, chunk, batch) for chunk in chunks]
        result = BatchResult()
        errors: list[DeliveryError] = []
        for future in futures:
            out = future.result()
            result.sent.extend(out.sent)
            result.rejected.update(out.rejected)
            result.retry.update(out.retry)
            result.ambiguous.update(out.ambiguous)
            if out.error is not None:
                errors.append(out.error)
        if errors and not result.sent and not result.rejected and not result.ambiguous:
            # Nothing reached the server: the batch as a whole failed.
            permanent = [e for e in errors if isinstance(e, PermanentDeliveryError)]
            raise (permanent or errors)[0]
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()
