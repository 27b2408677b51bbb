"""Running a training session under the TUI, then reporting on the normal console."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from mario_cli.config import MarioConfig
from mario_cli.events import Hint, RunFinished
from mario_cli.sinks.console import ConsoleSink
from mario_cli.tui.app import training_app
from mario_cli.tui.sources import ControlLike, EventSink, TrainerLike


def train_in_tui(
    cfg: MarioConfig,
    control: ControlLike,
    make_trainer: Callable[[EventSink], TrainerLike],
    console: Console,
    headless: bool = False,
) -> RunFinished:
    """Show the training app until the trainer returns; print the summary afterwards.

    ``make_trainer(sink)`` must build the trainer with ``sink`` among its sinks. A
    trainer exception is re-raised here, on the main thread, once the screen is gone.
    """
    _start_resource_tracker()
    app = training_app(cfg, control, make_trainer)
    app.run(headless=headless)
    outcome = app.outcome
    if not outcome.done.is_set():
        # Normally app.run() returns only after the worker thread; this is the fallback.
        control.request_stop("the TUI closed")
        console.print("[yellow]the TUI closed: saving a checkpoint and stopping the run…[/]")
        outcome.done.wait()
    if outcome.error is not None:
        raise outcome.error
    view = app.state.snapshot()
    print_hints(console, view.hints)
    finished = outcome.finished or view.finished
    if finished is None:
        finished = RunFinished(0, "failed", "the trainer returned no result", None, None)
    ConsoleSink(console, quiet=True)(finished)
    ui_error = app.ui_error or getattr(app, "_exception", None)
    if ui_error is not None:
        console.print(
            f"[bold red]the TUI failed[/] ({escape(type(ui_error).__name__)}: "
            f"{escape(str(ui_error))}); the run was saved. Train with --ui plain to avoid it.",
            highlight=False,
        )
    return finished


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker while stderr is still the terminal.

    The tracker process is given ``sys.stderr``'s file descriptor; under Textual,
    ``sys.stderr`` is a capture object without one, and env workers started from
    the trainer thread would fail with "bad value(s) in fds_to_keep".
    """
    if sys.platform == "win32":
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


def print_hints(console: Console, hints: list[Hint]) -> None:
    """The newest hint of each rule, so what the screen showed is not lost."""
    seen: dict[str, Hint] = {}
    for hint in hints:  # newest first
        seen.setdefault(hint.rule, hint)
    for hint in reversed(seen.values()):
        command = f"\n  try: [bold]{escape(hint.command)}[/]" if hint.command else ""
        console.print(
            f"[magenta]hint ({escape(hint.rule)}):[/] {escape(hint.message)}{command}",
            highlight=False,
        )
