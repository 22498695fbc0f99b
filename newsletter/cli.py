"""The ``newsletter`` command: parse, build settings, call one core function, print.

Errors from the core (``NewsletterError``) become one line on stderr and a non-zero exit
code here, in ``main``, and nowhere else; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from newsletter.config import Settings, load_settings
from newsletter.errors import NewsletterError

app = typer.Typer(
    name="newsletter",
    help="Compile and send a publication's weekly email newsletter.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class State:
    """Options given before the command name."""

    config: Optional[Path] = None
    debug: bool = False


state = State()


def settings() -> Settings:
    """The settings for this invocation (``--config``, ``NEWSLETTER_CONFIG``, ./config.yaml)."""
    return load_settings(state.config)


@app.callback()
def _global(
    config: Annotated[
        Optional[Path],
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
    for noisy in ("httpx", "httpcore", "cssutils", "CSSUTILS", "apscheduler.scheduler"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


@app.command()
def build(
    issue_file: Annotated[Path, typer.Argument(help="The issue file, e.g. issues/2024-10-25.yaml.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: output.dir in config).")] = None,
) -> None:
    """Compile ISSUE_FILE into email.html, email.txt and email.eml."""
    from newsletter import render

    cfg = settings()
    result = render.build_to_dir(issue_file, cfg, out or cfg.output.dir)
    for message in result.warnings:
        warn(message)
    for path, size in result.files:
        console.print(f"wrote {escape(str(path))} ({size:,} bytes)")


@app.command()
def preview(
    issue_file: Annotated[Path, typer.Argument(help="The issue file to preview.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: output.dir in config).")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the HTML in the web browser.")] = False,
) -> None:
    """Build ISSUE_FILE and show where its HTML is (or open it with --open)."""
    import webbrowser

    from newsletter import render

    cfg = settings()
    result = render.build_to_dir(issue_file, cfg, out or cfg.output.dir)
    for message in result.warnings:
        warn(message)
    html_path = result.files[0][0]
    console.print(f"preview: {html_path.resolve().as_uri()}")
    if open_browser and not webbrowser.open(html_path.resolve().as_uri()):
        warn("no web browser could be opened here; open the file above yourself")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning known errors into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    try:
        app(args=args, prog_name="newsletter")
    except SystemExit as exc:  # click's own exit: --help, usage errors (2), typer.Exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except NewsletterError as exc:
        if state.debug or "--debug" in args:
            raise
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
