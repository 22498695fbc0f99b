"""A real IMAP server for the bounce tests: Debian's dovecot started on 127.0.0.1 with a
temporary configuration (passwd-file logins, one file a user, a Maildir per user under a temporary home,
plain IMAP with STARTTLS on one random port, implicit TLS on another), stopped at the end.

Without the dovecot binary the tests that need it skip with the reason, unless the
environment variable CI is set: then they fail (CI installs dovecot-imapd).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.tls import Certificate
from tests.senders.conftest import free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
STARTUP_LIMIT = 20.0  # seconds; a deadline for the server to listen, not a measurement


def missing_reason() -> str | None:
    """Why dovecot cannot run here, or None."""
    if not Path(DOVECOT).is_file():
        return f"dovecot is not installed ({DOVECOT} missing; apt-get install dovecot-imapd)"
    return None


@dataclass
class Dovecot:
    folder: Path
    port: int  # plain IMAP, STARTTLS offered
    tls_port: int  # implicit TLS
    process: subprocess.Popen[bytes]
    users: dict[str, str] = field(default_factory=dict)

    def add_user(self) -> tuple[str, str]:
        """A new login with an empty mailbox: a passwd-file of its own, so dovecot never
        has to notice that a file it read changed."""
        user, password = f"bounces{secrets.token_hex(4)}", secrets.token_urlsafe(12)
        self.users[user] = password
        (self.folder / "users" / user).write_text(f"{user}:{{PLAIN}}{password}\n", encoding="utf-8")
        return user, password

    def log(self) -> str:
        path = self.folder / "dovecot.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _accounts() -> tuple[str, str, int, int]:
    """(internal user, login user, mail uid, mail gid): dovecot's own accounts when run
    as root (it refuses to log in as root), else the current user for everything."""
    if os.geteuid() == 0:
        internal = pwd.getpwnam("dovecot")
        login = "dovenull" if _exists("dovenull") else "nobody"
        return "dovecot", login, internal.pw_uid, internal.pw_gid
    me = pwd.getpwuid(os.geteuid())
    return me.pw_name, me.pw_name, me.pw_uid, me.pw_gid


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def start(certificate: Certificate) -> Dovecot:
    """Start dovecot in the foreground with its state in a new temporary folder (not
    pytest's: dovecot's own accounts must reach it, and pytest's base folder is private)."""
    internal, login, uid, gid = _accounts()
    folder = Path(tempfile.mkdtemp(prefix="newsletter-dovecot-"))
    folder.chmod(0o755)
    for name in ("run", "state", "home", "users"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    os.chown(folder / "home", uid, gid)
    port, tls_port = free_port(), free_port()
    config = f"""
base_dir = {folder}/run
state_dir = {folder}/state
log_path = {folder}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{certificate.cert}
ssl_key = <{certificate.key}
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 0
default_internal_user = {internal}
default_login_user = {login}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {folder}/users/%u
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={folder}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""
    (folder / "dovecot.conf").write_text(config, encoding="utf-8")
    process = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(folder / "dovecot.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    server = Dovecot(folder, port, tls_port, process)
    deadline = time.monotonic() + STARTUP_LIMIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode("utf-8", "replace") if process.stderr else ""
            raise RuntimeError(f"dovecot exited with {process.returncode}: {error.strip()} {server.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(100).startswith(b"* OK"):
                    return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"dovecot did not answer on 127.0.0.1:{port} within {STARTUP_LIMIT} s: {server.log()}")
