"""The ``newsletter`` command: parse, build settings, call one core function, print.

Errors from the core (``NewsletterError``) and bad options or arguments (click's usage
errors) become one line on stderr (``error``) and a non-zero exit code here, in ``main``,
and nowhere else; ``--debug``, before or after the command, shows the traceback instead.

Exit codes: 0 done; 1 failed (or a send left recipients unsent); 2 usage, config or issue
file error; 3 no new round-up; 4 an import imported some rows and rejected others; 130
interrupted.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

try:  # typer >= 0.22 vendors click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors  # type: ignore[no-redef]

from newsletter.errors import NewsletterError

if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy import Engine

    from newsletter import send as send_job_types
    from newsletter.browser import Browser
    from newsletter.config import Settings
    from newsletter.rendercheck import CheckOutput, RenderReport
    from newsletter.send import SendSummary
    from newsletter.weekly import WeekReport

app = typer.Typer(
    name="newsletter",
    help="Compile and send a publication's weekly email newsletter.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: typer's rich panels import rich's Markdown (markdown-it) first,
    # 0.05 s of every `--help`
    rich_markup_mode=None,
)


class _Output:
    """rich's Console for stdout or stderr, made when first used: ``--help`` prints
    through click and does without importing rich (20 ms)."""

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def rich(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr, highlight=False, soft_wrap=True)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rich, name)


console = _Output()
err_console = _Output(stderr=True)


def escape(text: str) -> str:
    """``text`` with rich's markup escaped."""
    from rich.markup import escape as escape_markup

    return escape_markup(text)


class State:
    """Options given before the command name."""

    config: Path | None = None
    debug: bool = False


state = State()

# An import that imported some rows and rejected others: not a failure, not a full success.
EXIT_PARTIAL_IMPORT = 4


def settings() -> Settings:
    """The settings for this invocation (``--config``, ``NEWSLETTER_CONFIG``, ./config.yaml)."""
    from newsletter.config import load_settings  # pydantic: 0.1 s that --help does without

    return load_settings(state.config)


@app.callback()
def _global(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Config file (default: $NEWSLETTER_CONFIG or ./config.yaml)."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Compile and send a publication's weekly email newsletter."""
    state.config = config
    state.debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Third-party chatter stays out of the editor's way unless asked for.
    for noisy in ("httpx", "httpcore", "cssutils", "CSSUTILS", "apscheduler.scheduler", "alembic", "flufl.bounce"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def error(message: str) -> None:
    """The one way an error reaches the user: one line on stderr."""
    err_console.print(f"[red]error:[/red] {escape(' '.join(message.split()))}", soft_wrap=True)


def _built(
    issue_file: Path,
    out: Path | None,
    check: Literal["auto", "required", "off"],
    cfg: Settings | None = None,
    *,
    browser: Browser | None = None,
    reuse: bool = True,
) -> CheckOutput:
    """Build ``issue_file`` into ``out`` (default: output.dir), run the render check in mode
    ``check`` (``browser``: one started early; ``reuse``: a report recorded for the same
    HTML is reused) and print the build's warnings."""
    from newsletter import rendercheck

    cfg = cfg or settings()
    done = rendercheck.check_issue(issue_file, cfg, out or cfg.output.dir, check, browser=browser, reuse=reuse)
    for message in done.build.warnings:
        warn(message)
    return done


@app.command()
def build(
    issue_file: Annotated[Path, typer.Argument(help="The issue file, e.g. issues/2024-10-25.yaml.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: output.dir in config).")
    ] = None,
) -> None:
    """Compile ISSUE_FILE into email.html, email.txt and email.eml, then run the render
    check (render_check.on_build)."""
    cfg = settings()
    mode = cfg.render_check.on_build
    done = _built(issue_file, out, mode, cfg)
    for path, size in done.build.files:
        console.print(f"wrote {escape(str(path))} ({size:,} bytes)")
    if mode != "off":
        _print_render_check(done.report)


@app.command()
def preview(
    issue_file: Annotated[Path, typer.Argument(help="The issue file to preview.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: output.dir in config).")
    ] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the HTML in the web browser.")] = False,
) -> None:
    """Build ISSUE_FILE and show where its HTML is (or open it with --open)."""
    import webbrowser

    html_path = _built(issue_file, out, "off").build.files[0][0]
    console.print(f"preview: {html_path.resolve().as_uri()}", soft_wrap=True)
    if open_browser and not webbrowser.open(html_path.resolve().as_uri()):
        warn("no web browser could be opened here; open the file above yourself")


@app.command()
def check(
    issue_file: Annotated[Path, typer.Argument(help="The issue file, e.g. issues/2024-10-25.yaml.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: output.dir in config).")
    ] = None,
    again: Annotated[
        bool,
        typer.Option("--again", help="Check again even if a report is recorded for exactly this HTML."),
    ] = False,
) -> None:
    """Build ISSUE_FILE and open it in Chromium at 375 and 600 px, light and dark: overflow,
    font sizes, contrast, tap targets, axe-core, email-client support, screenshots. A report
    recorded for exactly the same HTML is reused (--again checks anew)."""
    from newsletter.browser import Browser

    # Playwright's driver starts first, while the configuration is read; Chromium follows
    # once its path is known, while the email is built (unless the report is reused).
    with Browser(None) as browser:
        done = _built(issue_file, out, "auto", browser=browser, reuse=not again)
    _print_render_check(done.report)


def _print_render_check(report: RenderReport) -> None:
    from newsletter import rendercheck

    if report.skipped:
        warn(report.skipped)
        return
    console.print(f"render check: {len(report.renders)} renders in {report.seconds:.1f} s")
    for line in rendercheck.summary(report):
        console.print(f"  {escape(line)}", soft_wrap=True)
    for message in report.warnings:
        warn(message)
    for message in report.errors:
        error(message)
    if report.errors:
        raise typer.Exit(1)


@app.command()
def gather(
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Gather as of this time, ISO 8601 (e.g. 2024-10-25T21:00:00Z; default: now)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Issue file to write (default: issues/<date>.yaml).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an issue that is approved, sent or edited since it was gathered.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Also say what was forgiven in the feeds and which items were left out, and why."
        ),
    ] = False,
) -> None:
    """Gather this week's round-up and teasers from the feeds into a draft issue file."""
    from newsletter import gather as gathering
    from newsletter.errors import IssueFileError, IssueKeptError

    cfg = settings()
    result = gathering.gather_issue(cfg, _as_of(as_of, cfg))
    for message in result.warnings:
        warn(message)
    for message in result.notes if verbose else []:
        err_console.print(f"note: {escape(message)}", soft_wrap=True)
    try:
        path = gathering.write_draft(cfg, result.issue, out, force)
    except IssueKeptError as exc:
        raise IssueFileError(f"{exc} (use --force to overwrite it)") from None
    issue = result.issue
    parts = (["round-up"] if issue.roundup else []) + [f"{len(issue.teasers)} teasers"]
    console.print(f"wrote {escape(str(path))} ({', '.join(parts)})", soft_wrap=True)


@app.command()
def approve(
    issue_file: Annotated[Path, typer.Argument(help="The issue file to approve.")],
) -> None:
    """Mark ISSUE_FILE approved: the send job and the scheduler send approved issues."""
    from newsletter import send as send_job

    issue = send_job.approve(issue_file)
    console.print(f"approved {escape(str(issue_file))} ({escape(issue.subject)})")


@app.command("send-test")
def send_test(
    issue_file: Annotated[Path, typer.Argument(help="The issue file to send as a test.")],
    to: Annotated[
        list[str] | None,
        typer.Option("--to", help="Address to send to (repeatable; default: delivery.test_recipients)."),
    ] = None,
) -> None:
    """Send ISSUE_FILE to the editors with a [TEST] subject (no ledger, no status change)."""
    from newsletter import send as send_job

    sent = send_job.send_test(settings(), issue_file, to)
    console.print(f"test sent to {escape(', '.join(sent))}")


@app.command()
def send(
    issue_file: Annotated[Path, typer.Argument(help="The approved issue file to send.")],
    draft_ok: Annotated[bool, typer.Option("--draft-ok", help="Send even if the issue is still a draft.")] = False,
    allow_changed: Annotated[
        bool,
        typer.Option(
            "--allow-changed", help="Send the rest of the audience an issue that changed after its audience was frozen."
        ),
    ] = False,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Freeze and finish an issue that has no active subscribers to go to.")
    ] = False,
    show_status: Annotated[
        bool,
        typer.Option(
            "--status",
            help="Show the send's state: recipients per state, batches in flight (age, owner) and ambiguous ones; send nothing.",
        ),
    ] = False,
    reconcile: Annotated[
        bool,
        typer.Option(
            "--reconcile",
            help="Settle ambiguous recipients from the provider's events and list what is still unknown; send nothing.",
        ),
    ] = False,
    settle: Annotated[
        str | None,
        typer.Option(
            "--settle-ambiguous",
            metavar="sent|resend",
            help="Decide ambiguous recipients by hand (after checking the provider's activity log): count them as sent, or send them again.",
        ),
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option("--batch", metavar="ID", help="With --settle-ambiguous: only this batch (see --status)."),
    ] = None,
) -> None:
    """Send ISSUE_FILE to every active subscriber, exactly once. Run it again to resume."""
    from newsletter import send as send_job

    cfg = settings()
    if batch is not None and settle is None:
        raise typer.BadParameter("only with --settle-ambiguous", param_hint="--batch")
    if show_status:
        _print_status(send_job.status(cfg, issue_file))
        return
    if reconcile:
        result = send_job.reconcile(cfg, issue_file)
        _print_reconciliation(result, cfg.delivery.ambiguous_grace, cfg.delivery.backend)
        if not result.complete:
            raise typer.Exit(1)
        return
    if settle is not None:
        if settle not in ("sent", "resend"):
            raise typer.BadParameter("use sent or resend", param_hint="--settle-ambiguous")
        done = send_job.settle(cfg, issue_file, "sent" if settle == "sent" else "pending", batch_id=batch)
        where = f" of batch {batch}" if batch else ""
        console.print(f"settled {done.settled:,} ambiguous recipients{escape(where)} as {settle}")
        for b in done.refused:
            err_console.print(
                f"[yellow]not touched:[/yellow] batch {b.batch_id} ({b.rows:,} ambiguous recipients) is still "
                f"in flight, owner {escape(b.owner)}; settle it once its owner is gone",
                soft_wrap=True,
            )
        if settle == "sent":
            return
    with _progress_reporter() as progress:
        summary = send_job.send_issue(
            cfg,
            issue_file,
            progress=progress,
            allow_draft=draft_ok,
            allow_changed=allow_changed,
            allow_empty=allow_empty,
        )
    _print_summary(summary, cfg.delivery.backend)
    if summary.interrupted:
        raise typer.Exit(130)
    if not summary.complete or summary.lost_batches or summary.unrecorded:
        raise typer.Exit(1)


def _age(since: dt.datetime, now: dt.datetime) -> str:
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _print_status(status: send_job_types.SendStatus) -> None:
    if status.send is None:
        console.print(f"{status.issue}: {status.file_status}; not sent yet (no audience frozen)")
        return
    c, send = status.counts, status.send
    finished = f"finished {send.finished_at:%Y-%m-%d %H:%M} UTC" if send.finished_at else "not finished"
    console.print(
        f"{status.issue}: {status.file_status}; audience {send.audience:,} frozen "
        f"{send.created_at:%Y-%m-%d %H:%M} UTC, {finished}"
    )
    console.print(
        f"  sent {c.sent:,}, rejected {c.rejected:,}, skipped {c.skipped:,}, pending {c.pending:,}, "
        f"in flight {c.in_flight:,}, ambiguous {c.ambiguous:,}"
    )
    from newsletter.store.batches import owner_is_dead

    for b in status.in_flight:
        if owner_is_dead(b.owner):
            lease = "its process is gone: ambiguous at the next send or --reconcile"
        else:
            lease = "live" if b.live(status.now) else "lease expired: its owner died"
        console.print(
            f"  in flight: batch {b.batch_id}, {b.rows:,} recipients, for "
            f"{_age(b.claimed_at, status.now)}, owner {escape(b.owner)} ({lease})"
        )
    for b in status.ambiguous:
        console.print(
            f"  ambiguous: batch {b.batch_id}, {b.rows:,} recipients, sent "
            f"{_age(b.claimed_at, status.now)} ago: {escape(b.reason or '')}"
        )


def _settle_hint(backend: str) -> str:
    """How an operator learns what became of ambiguous recipients, for this backend."""
    if backend == "sendgrid":
        return (
            "SendGrid's event webhook settles them on its own; `newsletter send ISSUE --reconcile` shows what is "
            "left, and after checking SendGrid's activity log, `--settle-ambiguous sent|resend [--batch ID]` "
            "decides the rest."
        )
    if backend == "smtp":
        return (
            "SMTP has no delivery events: check the relay's log for these addresses (and the bounce mailbox), "
            "then decide with `newsletter send ISSUE --settle-ambiguous sent|resend [--batch ID]`."
        )
    return (
        "look in the outbox for their files, then decide with "
        "`newsletter send ISSUE --settle-ambiguous sent|resend [--batch ID]`."
    )


def _print_reconciliation(result: send_job_types.Reconciliation, grace_minutes: float, backend: str) -> None:
    console.print(
        f"{result.issue}: settled from the provider's events: {result.settled.sent:,} sent, "
        f"{result.settled.rejected:,} dropped (rejected); still ambiguous: {result.remaining:,}"
    )
    if result.pending or result.in_flight:
        console.print(
            f"  not sent yet: {result.pending:,} pending, {result.in_flight:,} in flight "
            "(`newsletter send ISSUE` sends them; the scheduler's resume job does it on its own)"
        )
    for b in result.waiting:
        console.print(f"  waiting for events (grace {grace_minutes:g} min): batch {b.batch_id}, {b.rows:,} recipients")
    for b in result.unknown:
        console.print(
            f"  unknown after {grace_minutes:g} min: batch {b.batch_id}, {b.rows:,} recipients: "
            f"{escape(b.reason or '')}"
        )
    if result.unknown:
        err_console.print(f"[yellow]no event arrived for these:[/yellow] {_settle_hint(backend)}", soft_wrap=True)
    if result.complete:
        console.print("every recipient is settled: the issue is marked sent")


def _print_summary(summary: SendSummary, backend: str) -> None:
    if summary.already_complete:
        console.print(f"{summary.issue}: already sent ({summary.sent:,} recipients); nothing to do")
        return
    console.print(
        f"{summary.issue}: sent {summary.sent:,} of {summary.audience:,} "
        f"({summary.sent_this_run:,} in this run), skipped {summary.skipped:,}, "
        f"rejected {summary.rejected:,}, unsent {summary.pending + summary.in_flight:,}, "
        f"ambiguous {summary.ambiguous:,}"
    )
    if summary.reconciled.total:
        console.print(
            f"settled from the provider's events: {summary.reconciled.sent:,} sent, "
            f"{summary.reconciled.rejected:,} dropped"
        )
    if summary.stopped:
        err_console.print(f"[red]stopped:[/red] {escape(summary.stopped)}", soft_wrap=True)
    if summary.repaired:
        err_console.print(
            f"[yellow]repaired:[/yellow] {summary.repaired:,} recipients were left in flight in closed batches "
            "(an earlier ledger write failed); they are now reported ambiguous",
            soft_wrap=True,
        )
    if summary.lost_batches:
        err_console.print(
            f"[yellow]taken over:[/yellow] {len(summary.lost_batches):,} batches "
            f"({escape(_first(summary.lost_batches))}) were taken over while this process was paused or cut "
            "off past its lease; it sent and recorded nothing more for them",
            soft_wrap=True,
        )
    if summary.unrecorded:
        err_console.print(
            f"[red]not recorded:[/red] {sum(summary.unrecorded.values()):,} recipients of batches "
            f"{escape(_first(list(summary.unrecorded)))}: the ledger could not be written; they show as ambiguous "
            f"once the batches' lease runs out. {_settle_hint(backend)}",
            soft_wrap=True,
        )
    if summary.abandoned:
        err_console.print(
            f"[yellow]stopped mid-request:[/yellow] {summary.abandoned:,} recipients whose request had left "
            "were recorded ambiguous",
            soft_wrap=True,
        )
    if summary.ambiguous:
        batches = _first([b.batch_id for b in summary.ambiguous_batches])
        err_console.print(
            f"[yellow]ambiguous:[/yellow] {summary.ambiguous:,} recipients in batches {escape(batches)} "
            "may or may not have been accepted (the provider's answer was lost, or a sending process died). "
            f"They are never resent silently. {_settle_hint(backend)}",
            soft_wrap=True,
        )
    if summary.complete:
        console.print("every recipient is settled: the issue is marked sent")


def _first(names: list[str], shown: int = 5) -> str:
    """The first few of a list of names, and how many more."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


@contextmanager
def _progress_reporter() -> Iterator[Callable[[int, int], None]]:
    """A progress bar (rate, ETA) on a terminal; a log line every 10% otherwise."""
    if err_console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TimeRemainingColumn

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
            console=err_console.rich,
        ) as bar:
            task = bar.add_task("sending", total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield update
        return
    log = logging.getLogger("newsletter.send")
    step = {"next": 0.0}

    def report(done: int, total: int) -> None:
        if total and done / total >= step["next"]:
            log.info("settled %d of %d recipients (%.0f%%)", done, total, 100 * done / total)
            step["next"] = done / total + 0.1

    yield report


ReportFormat = Literal["table", "json", "csv"]


@app.command()
def report(
    issue: Annotated[
        str | None,
        typer.Argument(help="The issue: its slug or its file. Without it, the last 12 issues compared."),
    ] = None,
    output: Annotated[
        ReportFormat, typer.Option("--format", help="table (for people), json or csv (for scripts).")
    ] = "table",
) -> None:
    """Show what happened to a sent issue: sending, delivery, opens and clicks, clicks per link."""
    import csv
    import json

    from newsletter import issuefile
    from newsletter import report as reports

    with _database() as engine:
        if issue is None:
            compared = reports.compare_issues(engine)
            header = ("issue", "sent", "delivery_rate", "click_rate", "click_is_unique", "unsubscribe_rate")
            lines = [
                (c.issue, c.sent, c.rates.delivery, c.rates.click, c.rates.click_is_unique, c.rates.unsubscribe)
                for c in compared
            ]
            if output == "json":
                typer.echo(json.dumps([dict(zip(header, line, strict=True)) for line in lines], indent=2))
            elif output == "csv":
                writer = csv.writer(sys.stdout)
                writer.writerows([header, *lines])
            else:
                for c in compared:
                    rate = {k: "-" if v is None else f"{v * 100:5.1f} %" for k, v in vars(c.rates).items()}
                    console.print(
                        f"{c.issue:<24}{c.sent:>12,}  delivered {rate['delivery']}  clicked {rate['click']}"
                        f"  unsubscribed {rate['unsubscribe']}"
                    )
            return
        slug = issuefile.load(Path(issue)).slug if issue.endswith((".yaml", ".yml")) else issue
        found = reports.issue_report(engine, slug)
    if output == "json":
        typer.echo(json.dumps(found.as_dict(), indent=2))
        return
    rows = reports.figure_rows(found)
    if output == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerows([("section", "figure", "value"), *rows])
        return
    console.print(f"[bold]{escape(found.subject)}[/bold] ({found.issue})")
    section = ""
    for part, name, value in rows:
        if part != section:
            console.print(f"\n[bold]{part}[/bold]")
            section = part
        console.print(f"  {escape(name):<48} {value}")
    console.print(f"\n{reports.OPENS_CAVEAT}")


@app.command()
def run(
    as_of: Annotated[str | None, typer.Option("--as-of", help="Run as of this time, ISO 8601 (default: now).")] = None,
) -> None:
    """Run the weekly job once: gather, write the issue, build, send (idempotent)."""
    from newsletter import weekly

    cfg = settings()
    when = _as_of(as_of, cfg)
    with _progress_reporter() as progress:
        report = weekly.run_week(cfg, when, progress=progress)
    _print_report(report, cfg.delivery.backend)


@app.command()
def draft(
    as_of: Annotated[str | None, typer.Option("--as-of", help="Run as of this time, ISO 8601 (default: now).")] = None,
) -> None:
    """Approve mode's draft job once: gather the coming edition and send the editors a test."""
    from newsletter import weekly

    cfg = settings()
    _print_report(weekly.draft_week(cfg, _as_of(as_of, cfg)), cfg.delivery.backend)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Folder for the demo's issues, database and outbox.")] = Path(
        "demo"
    ),
) -> None:
    """Run the whole weekly job once on the embedded defaults (sample feeds, demo subscribers, outbox).

    Uses the bundled sample feeds at their as-of time, a SQLite database in DIR seeded with
    a few demo subscribers, and the outbox sender, which writes one .eml file a recipient."""
    from newsletter import demo as demo_job

    cfg = settings()
    result = demo_job.run_demo(cfg, folder)
    if result.added:
        console.print(f"added {result.added} demo subscribers to {escape(str(result.folder / 'newsletter.db'))}")
    _print_report(result.report, "outbox")
    if result.report.issue_path:
        console.print(f"issue file: {escape(str(result.report.issue_path))}")
    console.print(f"sent messages (.eml files): {escape(str(result.outbox / result.report.edition.isoformat()))}")


@app.command("schedule")
def schedule_command(
    status: Annotated[
        bool, typer.Option("--status", help="Print the next run times (local and UTC) and exit.")
    ] = False,
) -> None:
    """Run the weekly job on its schedule, in the foreground (for systemd or a container)."""
    from newsletter import schedule as scheduling

    cfg = settings()
    if status:
        zone = cfg.schedule_zone
        console.print(
            f"mode {cfg.schedule.mode}, time zone {zone.key}, misfire grace {cfg.schedule.misfire_grace_minutes} min"
        )
        for run_ in scheduling.next_runs(cfg):
            console.print(f"{run_.job:13} {run_.local:%a %Y-%m-%d %H:%M %Z}   {run_.utc:%Y-%m-%d %H:%M} UTC")
        console.print(
            f"resume: every {cfg.schedule.resume_every} min, until {cfg.schedule.resume_deadline:g} h "
            "after a send's audience was frozen"
        )
        from newsletter import weekly

        with _database() as engine:
            unfinished = weekly.resumable(cfg, engine)
        for u in unfinished:
            until = f"{u.deadline.astimezone(zone):%a %Y-%m-%d %H:%M %Z}"
            console.print(
                f"unfinished {escape(u.send.issue)}: {u.progress}; "
                + ("another process is sending it" if u.busy else f"resumed until {until}")
            )
        if not unfinished:
            console.print("no unfinished sends")
        return
    scheduling.run_scheduler(cfg)


def _as_of(text: str | None, cfg: Settings) -> dt.datetime | None:
    """The one reading of ``--as-of`` (gather, run, draft): ISO 8601, in the publication's
    time zone when it has no offset; a bad value is a usage error."""
    if not text:
        return None
    from newsletter import gather as gathering

    try:
        return gathering.parse_as_of(text, cfg.zone)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--as-of") from None


def _print_report(report: WeekReport, backend: str) -> None:
    for message in report.warnings:
        warn(message)
    if report.summary is not None and not report.summary.already_complete:
        _print_summary(report.summary, backend)
    console.print(f"{report.edition}: {report.outcome}: {escape(report.message)}")
    if report.summary is not None and report.summary.interrupted:
        raise typer.Exit(130)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default: web.host, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=1, max=65535, help="Port to listen on (default: web.port).")
    ] = None,
) -> None:
    """Run the web app: unsubscribe, sign-up, archive, SendGrid webhook, editors' preview."""
    from newsletter.web import server

    server.serve(settings(), host, port)


# --- database and subscribers (newsletter/store) -------------------------------------

db_app = typer.Typer(help="Create, migrate and inspect the database.", no_args_is_help=True)
subscribers_app = typer.Typer(
    help="The subscriber list: add, import, export, list, remove, expire.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(subscribers_app, name="subscribers")


@contextmanager
def _database() -> Iterator[Engine]:
    """The configured database, checked (reachable, schema current), closed afterwards."""
    from newsletter.store.db import database

    with database(settings()) as engine:
        yield engine


StatusOption = Annotated[
    str | None,
    typer.Option("--status", help="Only this status: pending, active, unsubscribed, bounced, complained."),
]


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database or bring its schema up to date (Alembic migrations)."""
    from newsletter.store.db import upgrade_database

    done = upgrade_database(settings())
    if done.before == done.after:
        console.print(f"{escape(done.database)} is up to date (schema {done.after})")
    else:
        console.print(f"{escape(done.database)}: schema {done.before or '(empty)'} -> {done.after}")


@db_app.command("status")
def db_status() -> None:
    """Show which database is configured and whether its schema is current."""
    from newsletter.store.db import database_status

    where, state = database_status(settings())
    if state.up_to_date:
        console.print(f"{escape(where)}: schema {state.current}, up to date")
        return
    console.print(f"{escape(where)}: schema {state.current or '(empty)'}, this version needs {state.head}")
    raise typer.Exit(1)


@subscribers_app.command("add")
def subscribers_add(
    email: Annotated[str, typer.Argument(help="The address to add.")],
    name: Annotated[str, typer.Option("--name", help="The subscriber's name.")] = "",
    status: Annotated[str, typer.Option("--status", help="active, or pending (until they confirm).")] = "active",
    source: Annotated[str, typer.Option("--source", help="Where the subscriber came from.")] = "cli",
    resubscribe: Annotated[
        bool,
        typer.Option(
            "--resubscribe", help="Re-activate someone who opted out or was removed (only with their fresh consent)."
        ),
    ] = False,
) -> None:
    """Add one subscriber."""
    from newsletter.store import subscribers

    with _database() as engine:
        added = subscribers.add(engine, email, name=name, status=status, source=source, resubscribe=resubscribe)
    console.print(f"added {escape(added.email)} ({added.status})")


@subscribers_app.command("import")
def subscribers_import(
    file: Annotated[Path, typer.Argument(help="A UTF-8 CSV file whose header names the columns (email required).")],
    resubscribe: Annotated[
        bool,
        typer.Option(
            "--resubscribe", help="Re-activate people who opted out or were removed (only with their fresh consent)."
        ),
    ] = False,
    rejects: Annotated[
        Path | None, typer.Option("--rejects", help="Write the rejected rows, with line and reason, to this CSV file.")
    ] = None,
    source: Annotated[str, typer.Option("--source", help="Source for rows without a source column.")] = "import",
) -> None:
    """Import subscribers from a CSV file of any size; rerunning it is safe."""
    from newsletter.store import importer

    with _database() as engine, err_console.status("importing...") as status:
        result = importer.import_csv(
            engine,
            file,
            resubscribe=resubscribe,
            rejects_path=rejects,
            source=source,
            progress=lambda r: status.update(f"importing {escape(str(file))}: {r.rows:,} rows read"),
        )
    shown = 20
    for notice in result.notices[:shown]:
        err_console.print(f"{escape(str(file))}: {escape(str(notice))}")
    for reject in result.rejects[:shown]:
        err_console.print(f"{escape(str(file))}: {escape(str(reject))}")
    hidden = max(0, result.rejected - shown) + max(0, len(result.notices) - shown)
    if hidden:
        err_console.print(f"... {hidden:,} more" + (f" (all rejects are in {escape(str(rejects))})" if rejects else ""))
    console.print(f"imported {escape(str(file))}: {result.summary()}")
    if result.rejected:
        warn(
            f"{file}: {result.rejected:,} of {result.rows:,} rows rejected; the others were imported "
            f"(exit code {EXIT_PARTIAL_IMPORT})"
        )
        raise typer.Exit(EXIT_PARTIAL_IMPORT)


@subscribers_app.command("export")
def subscribers_export(
    status: StatusOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write to this file (default: standard output).")
    ] = None,
) -> None:
    """Export subscribers as CSV, safe to open in a spreadsheet."""
    from newsletter.store import export

    with _database() as engine:
        if out is None:
            export.export_csv(engine, sys.stdout, status=status)
            return
        written = export.export_file(engine, out, status=status)
    err_console.print(f"exported {written:,} subscribers to {escape(str(out))}")


@subscribers_app.command("list")
def subscribers_list(
    status: StatusOption = None,
    search: Annotated[str | None, typer.Option("--search", help="Part of the address or the name.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many.")] = 50,
) -> None:
    """List subscribers (oldest first)."""
    from newsletter.store import subscribers

    with _database() as engine:
        found = subscribers.list_subscribers(engine, status=status, search=search, limit=limit + 1)
    for sub in found[:limit]:  # tab-separated, for scripts
        typer.echo(f"{sub.email}\t{sub.name}\t{sub.status}\t{sub.created_at:%Y-%m-%d}")
    if len(found) > limit:
        err_console.print(f"(showing the first {limit}; use --limit or --search for more)")


@subscribers_app.command("count")
def subscribers_count(status: StatusOption = None) -> None:
    """Print how many subscribers there are (with --status: in that status)."""
    from newsletter.store import subscribers

    with _database() as engine:
        console.print(str(subscribers.count(engine, status)))


@subscribers_app.command("stats")
def subscribers_stats() -> None:
    """Show how many subscribers are in each status, and how many are suppressed."""
    from newsletter.store import subscribers

    with _database() as engine:
        found = subscribers.stats(engine)
    for name, n in found.by_status.items():
        console.print(f"{name:<13}{n:>10,}")
    console.print(f"{'total':<13}{found.total:>10,}")
    console.print(f"{'suppressed':<13}{found.suppressed:>10,}  (removed, never to be re-added)")


@subscribers_app.command("unsubscribe")
def subscribers_unsubscribe(email: Annotated[str, typer.Argument(help="The address to unsubscribe.")]) -> None:
    """Stop sending to EMAIL (the record stays, as unsubscribed)."""
    from newsletter.store import subscribers

    with _database() as engine:
        found = subscribers.unsubscribe(engine, email)
    console.print(f"{escape(found.email)} is {found.status}")


@subscribers_app.command("remove")
def subscribers_remove(
    email: Annotated[str, typer.Argument(help="The address to erase.")],
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a terminal: scripts, cron)."),
    ] = False,
) -> None:
    """Erase EMAIL's personal data; a hashed entry keeps it from being re-added."""
    from newsletter.store import subscribers

    if not yes:
        if not sys.stdin.isatty():
            raise click_errors.UsageError(f"no terminal to confirm erasing {email} on: pass --yes to erase it")
        typer.confirm(f"Erase {email} for good?", abort=True)
    with _database() as engine:
        erased = subscribers.remove(engine, email)
    console.print(f"{'erased' if erased else 'not on the list; suppressed'} {escape(email)}")


@subscribers_app.command("expire")
def subscribers_expire() -> None:
    """Forget sign-ups nobody confirmed within three days (the scheduler does it daily)."""
    from newsletter.store import subscribers

    with _database() as engine:
        done = subscribers.expire_pending(engine)
    console.print(
        f"forgot {done.subscribers:,} unconfirmed sign-ups, and {done.consents:,} unconfirmed "
        "sign-ups of people already on the list"
    )


# --- bounces (newsletter/bounces.py) --------------------------------------------------------

bounces_app = typer.Typer(help="Bounces of SMTP sends: read the bounce mailbox.", no_args_is_help=True)
app.add_typer(bounces_app, name="bounces")


@bounces_app.command("fetch")
def bounces_fetch() -> None:
    """Read the bounce mailbox once (bounces.imap or bounces.path) and apply its delivery
    status notifications; the scheduler does it hourly."""
    from newsletter import bounces
    from newsletter.store.db import database

    cfg = settings()
    with database(cfg) as engine:
        report = bounces.fetch(cfg, engine)
    for ref, why in report.left:
        warn(f"{report.source}: {ref}: {why}; left in the mailbox")
    console.print(escape(f"{report.source}: {report.summary()}"))


welcome_app = typer.Typer(help="The welcome mail sent after a sign-up is confirmed.", no_args_is_help=True)
app.add_typer(welcome_app, name="welcome")


@welcome_app.command("retry")
def welcome_retry() -> None:
    """Send again the welcome mails that failed (the scheduler does it daily)."""
    from newsletter import welcome
    from newsletter.senders import sender_for

    cfg = settings()
    with _database() as engine, sender_for(cfg) as sender:
        done = welcome.retry_failed(engine, cfg, sender, now=dt.datetime.now(dt.UTC))
    console.print(f"welcome mails: {done.sent:,} sent, {done.failed:,} failed again")
    if done.failed:
        raise typer.Exit(1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _debug_first(args: list[str]) -> list[str]:
    """``--debug`` is an option of the whole command; accept it after the command too
    (``newsletter build X --debug``), up to a ``--`` that ends the options."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:end]:
        return args
    return ["--debug", *[a for a in args[:end] if a != "--debug"], *args[end:]]


def _usage_message(exc: click_errors.UsageError) -> str:
    """A usage error as one line: ``--as-of: not an ISO 8601 ...`` for a bad value (the
    same words whichever command has the option), click's wording otherwise, and where
    to read more."""
    message = exc.format_message()
    if isinstance(exc, click_errors.BadParameter) and not isinstance(exc, click_errors.MissingParameter):
        hint = exc.param_hint
        if hint is None and exc.param is not None and exc.param.opts:
            hint = exc.param.opts[0]
        if isinstance(hint, str):
            message = f"{hint.strip(chr(39))}: {exc.message}"
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return message + where


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning known errors into one line and an exit code."""
    args = _debug_first(list(sys.argv[1:] if argv is None else argv))
    if argv is None:  # a real process: SIGTERM (systemd, docker stop) stops like Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        # Not click's standalone mode: it prints usage errors as a boxed, multi-line panel.
        code = typer.main.get_command(app).main(args=args, prog_name="newsletter", standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except click_errors.NoArgsIsHelpError as exc:  # bare `newsletter` or a bare group: the help
        exc.show()
        return exc.exit_code
    except click_errors.UsageError as exc:  # a bad option value, a missing argument, ...
        error(_usage_message(exc))
        return exc.exit_code
    except click_errors.ClickException as exc:
        error(exc.format_message())
        return exc.exit_code
    except typer.Abort:  # "no" to a confirmation
        err_console.print("aborted")
        return 1
    except NewsletterError as exc:
        if state.debug:
            raise
        error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return code if isinstance(code, int) else 0


def entry() -> None:
    """The ``newsletter`` command: ``main``, then exit (see ``_leave``)."""
    _leave(main())


def _leave(code: int) -> None:
    """Exit with ``code``. After a stop request the send gave up what was still out
    (``delivery.shutdown_seconds``); a thread still waiting for an answer that will be
    ignored must not hold the process past systemd's stop timeout."""
    from newsletter import shutdown

    if shutdown.requested() and any(t.is_alive() and not t.daemon for t in threading.enumerate()[1:]):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
