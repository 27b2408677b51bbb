"""The ``mario`` command: one Typer app, one Rich console, one-line errors."""

from __future__ import annotations

import inspect
import sys

import typer

from mario_cli.cli import (
    bench,
    config_cmd,
    monitor,
    plot,
    plugins_cmd,
    record,
    runs_cmd,
    train,
    tune,
)
from mario_cli.cli import eval as eval_cmd
from mario_cli.cli.console import console, print_error
from mario_cli.errors import MarioError

app = typer.Typer(
    name="mario",
    help="Train agents to play Super Mario Bros from pixels.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(bench.app, name="bench")
app.command("train")(train.train)
app.command("resume")(train.resume)
app.command("eval")(eval_cmd.eval_command)
app.command("record")(record.record)
app.command("tune")(tune.tune)
app.command("plot")(plot.plot)
app.command("runs")(runs_cmd.runs)
app.command("monitor")(monitor.monitor)
app.command("plugins")(plugins_cmd.plugins)


def _keeps_its_lines(paragraph: str) -> bool:
    """Click's no-rewrap marker (a paragraph that starts with \\b), a list or an indented
    block: laid out by hand, so its line breaks are kept."""
    return paragraph.startswith("\b") or any(
        line.startswith((" ", "-", "*")) for line in paragraph.splitlines()
    )


def reflow(doc: str) -> str:
    """A docstring with each paragraph on one line, for the terminal to wrap.

    Text after Click's \\f line (hidden from help) and paragraphs laid out by hand are
    kept as written.
    """
    shown, cut, hidden = inspect.cleandoc(doc).partition("\f")
    paragraphs = shown.split("\n\n")
    joined = (p if _keeps_its_lines(p) else " ".join(p.split()) for p in paragraphs)
    return "\n\n".join(joined).rstrip() + (("\n" + cut + hidden) if cut else "")


def reflow_help(typer_app: typer.Typer) -> None:
    """Every command's help text reflowed.

    Typer keeps a docstring's line breaks, so lines written for the source's width broke
    again mid-sentence in an 80-column terminal.
    """
    for command in typer_app.registered_commands:
        doc = command.help if command.help is not None else inspect.getdoc(command.callback)
        if doc:
            command.help = reflow(doc)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)


reflow_help(app)

_debug = False


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    global _debug
    _debug = debug
    if version:
        from mario_cli import __version__

        console.print(f"mario {__version__}")
        raise typer.Exit()


def _add_plugin_commands() -> None:
    from mario_cli.plugins import get_host

    try:
        get_host().register_commands(app)
    except MarioError as exc:
        print_error(str(exc))
        sys.exit(exc.exit_code)
    reflow_help(app)


def main() -> None:
    """Entry point of the ``mario`` script."""
    _add_plugin_commands()
    try:
        app()
    except MarioError as exc:
        if _debug:
            console.print_exception()
        print_error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print_error("interrupted")
        sys.exit(130)
