"""The bounce mailbox's other shapes and failures: a Maildir folder and an mbox file on
disk, IMAP over implicit TLS and STARTTLS, and the one-line errors of
``newsletter bounces fetch`` (login refused, folder missing, server down, nothing
configured), plus the hourly scheduler job."""

from __future__ import annotations

import logging
import mailbox as stdlib_mailbox
from pathlib import Path

import pytest
import yaml

from newsletter import bounces, cli, schedule
from newsletter.config import BounceImap, load_settings
from newsletter.errors import MailboxError
from newsletter.mailbox import ImapSource
from newsletter.store import subscribers
from newsletter.verp import DeliveryTokens
from tests.bounces.conftest import SECRET, Mailbox, Sent
from tests.helpers import dsn
from tests.helpers.tls import Certificate
from tests.senders.conftest import free_port

TOKENS = DeliveryTokens(SECRET)


def _with_bounces(done: Sent, **bounces_config: object) -> Path:
    data = yaml.safe_load(done.config.read_text(encoding="utf-8"))
    data["bounces"].update(bounces_config)
    done.config.write_text(yaml.safe_dump(data), encoding="utf-8")
    return done.config


@pytest.fixture
def fetch_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``fetch_cli(config, env)``: `newsletter bounces fetch` with exactly these of the
    test's variables set: its exit code and its output (stdout and stderr)."""

    def run(config: Path, env: dict[str, str]) -> tuple[int, str]:
        for name in ("TEST_IMAP_USER", "TEST_IMAP_PASSWORD", "NEWSLETTER_SECRET_KEY"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code = cli.main(["--config", str(config), "bounces", "fetch"])
        out, err = capsys.readouterr()
        return code, out + err

    return run


def _count(path: Path) -> int:
    box = stdlib_mailbox.mbox(path, create=False)
    try:
        return len(box)
    finally:
        box.close()


def test_maildir(sent, tmp_path: Path) -> None:
    done = sent(2)
    a, b = sorted(done.envelopes)
    folder = stdlib_mailbox.Maildir(tmp_path / "bounces", create=True)
    folder.add(dsn.dsn(done.messages[a], envelope_to=done.envelopes[a], recipient=a))
    folder.add(dsn.auto_reply(done.messages[b], envelope_to=done.envelopes[b]))
    settings = load_settings(_with_bounces(done, path=str(tmp_path / "bounces")), env={})
    report = bounces.fetch(settings, done.engine)
    assert (report.read, report.hard, len(report.left)) == (2, 1, 1)
    assert subscribers.get(done.engine, a).status == "bounced"
    assert len(folder) == 1  # the auto-reply stays
    assert len(folder.get_folder("Processed")) == 1
    assert bounces.fetch(settings, done.engine).read == 1  # only the one left in place


def test_mbox_moves_processed_messages_beside_it(sent, tmp_path: Path) -> None:
    done = sent(2)
    a, b = sorted(done.envelopes)
    path = tmp_path / "bounces.mbox"
    box = stdlib_mailbox.mbox(path)
    box.add(dsn.dsn(done.messages[a], envelope_to=done.envelopes[a], recipient=a, status="4.2.2"))
    box.add(dsn.qmail_bounce(envelope_to=done.envelopes[b], recipient=b))
    box.flush()
    box.close()
    settings = load_settings(_with_bounces(done, path=str(path)), env={})
    report = bounces.fetch(settings, done.engine)
    assert (report.read, report.hard, report.soft, report.left) == (2, 1, 1, [])
    assert _count(path) == 0
    assert _count(tmp_path / "bounces.mbox.processed") == 2
    assert subscribers.get(done.engine, b).status == "bounced"


def test_a_path_that_is_no_mailbox(sent, tmp_path: Path, fetch_cli) -> None:
    done = sent(1)
    (tmp_path / "notes.txt").write_text("shopping list\n", encoding="utf-8")
    (tmp_path / "empty-dir").mkdir()
    env = {"NEWSLETTER_SECRET_KEY": SECRET}
    for path, message in (
        (tmp_path / "notes.txt", "is not an mbox file"),
        (tmp_path / "empty-dir", "is not a Maildir folder"),
        (tmp_path / "missing", "does not exist"),
    ):
        code, output = fetch_cli(_with_bounces(done, path=str(path)), env)
        assert code == 1 and message in output and "Traceback" not in output, output
        assert len(output.strip().splitlines()) == 1


def test_cli_reports_and_one_line_errors(sent, mailbox: Mailbox, fetch_cli) -> None:
    done = sent(1)
    (rcpt,) = done.envelopes
    env = mailbox.env()
    config = _with_bounces(done, imap=mailbox.imap_config())
    mailbox.append(dsn.dsn(done.messages[rcpt], envelope_to=done.envelopes[rcpt], recipient=rcpt))
    mailbox.append(dsn.auto_reply(done.messages[rcpt], envelope_to=done.envelopes[rcpt]))
    code, output = fetch_cli(config, env)
    assert code == 0, output
    assert (
        "2 messages read: 1 hard bounces, 0 soft bounces, 0 delays (0 of them recorded before), 1 left in place"
        in output
        and "subscribers changed: 1 bounced" in output
    )
    assert "INBOX uid 2: not a bounce: an automatic reply" in output and "left in the mailbox" in output
    for name, value, message in (
        ("imap", mailbox.imap_config(folder="Nowhere"), "has no folder 'Nowhere'"),
        ("imap", mailbox.imap_config(port=free_port()), "imap: cannot reach 127.0.0.1:"),
    ):
        code, output = fetch_cli(_with_bounces(done, **{name: value}), env)
        assert code == 1 and message in output and "Traceback" not in output, output
    code, output = fetch_cli(_with_bounces(done, imap=mailbox.imap_config()), {**env, "TEST_IMAP_PASSWORD": "wrong"})
    assert code == 1 and f"refused the login of '{mailbox.user}'" in output, output
    assert "wrong" not in output  # the password is never shown
    code, output = fetch_cli(
        _with_bounces(done, imap=mailbox.imap_config()),
        {"TEST_IMAP_USER": mailbox.user, "NEWSLETTER_SECRET_KEY": SECRET},
    )
    assert code == 2 and "TEST_IMAP_PASSWORD, which is not set" in output, output
    code, output = fetch_cli(_with_bounces(done, imap=None), env)
    assert code == 2 and "no bounce mailbox: set bounces.imap or bounces.path" in output, output


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_imap_over_tls(security: str, mailbox: Mailbox, imap_certificate: Certificate) -> None:
    config = BounceImap(
        host="127.0.0.1",
        port=mailbox.server.tls_port if security == "tls" else mailbox.server.port,
        security=security,  # type: ignore[arg-type]
    )
    mailbox.append(b"Subject: hello\r\n\r\nnot a bounce\r\n")
    source = ImapSource(config, mailbox.user, mailbox.password, tls_context=imap_certificate.client_context())
    try:
        assert [letter.ref for letter in source.letters()] == ["INBOX uid 1"]
    finally:
        source.close()
    # The system's trust store does not know the test CA: the certificate is checked.
    with pytest.raises(MailboxError, match="TLS with 127.0.0.1:.* failed"):
        ImapSource(config, mailbox.user, mailbox.password)


def test_the_scheduler_reads_the_mailbox_hourly(sent, mailbox: Mailbox, caplog, monkeypatch) -> None:
    done = sent(1)
    (rcpt,) = done.envelopes
    assert schedule.BOUNCES_JOB not in schedule.jobs(done.settings)  # no mailbox: no job
    config = _with_bounces(done, imap=mailbox.imap_config())
    settings = load_settings(config, env={})
    func, trigger = schedule.jobs(settings)[schedule.BOUNCES_JOB]
    assert func == "newsletter.schedule:scheduled_bounces" and str(trigger) == "interval[1:00:00]"
    for name, value in mailbox.env().items():
        monkeypatch.setenv(name, value)
    mailbox.append(dsn.dsn(done.messages[rcpt], envelope_to=done.envelopes[rcpt], recipient=rcpt))
    with caplog.at_level(logging.INFO, logger="newsletter.schedule"):
        schedule.scheduled_bounces(str(config))
    assert subscribers.get(done.engine, rcpt).status == "bounced"
    assert "hourly bounces job: imap 127.0.0.1" in caplog.text and "1 hard" in caplog.text
    caplog.clear()
    monkeypatch.setenv("TEST_IMAP_PASSWORD", "wrong")
    with caplog.at_level(logging.INFO, logger="newsletter.schedule"):
        schedule.scheduled_bounces(str(config))  # logged, not raised: the next hour tries again
    assert "hourly bounces job failed: imap: 127.0.0.1" in caplog.text and "refused the login" in caplog.text


def test_delete_processed_on_disk(sent, tmp_path: Path) -> None:
    done = sent(2)
    a, b = sorted(done.envelopes)
    folder = stdlib_mailbox.Maildir(tmp_path / "maildir", create=True)
    folder.add(dsn.dsn(done.messages[a], envelope_to=done.envelopes[a], recipient=a))
    path = tmp_path / "bounces.mbox"
    box = stdlib_mailbox.mbox(path)
    box.add(dsn.dsn(done.messages[b], envelope_to=done.envelopes[b], recipient=b))
    box.flush()
    box.close()
    for where in (tmp_path / "maildir", path):
        settings = load_settings(_with_bounces(done, path=str(where), delete_processed=True), env={})
        assert bounces.fetch(settings, done.engine).hard == 1
    assert len(folder) == 0 and "Processed" not in folder.list_folders()
    assert _count(path) == 0 and not (tmp_path / "bounces.mbox.processed").exists()
    assert {subscribers.get(done.engine, e).status for e in (a, b)} == {"bounced"}
