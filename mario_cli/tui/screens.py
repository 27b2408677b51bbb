"""Modal screens: the quit confirmation and the key help."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

HELP_TEXT = """\
[b]p[/]       pause / resume training (the trainer waits between rollout steps)
[b]s[/]       save a checkpoint after the current iteration
[b]q[/]       save a checkpoint and stop (asks first)
[b]ctrl+c[/]  save a checkpoint and stop, without asking
[b]?[/]       this help

Diagnostics turn [yellow]warn[/] or [red]bad[/] at the thresholds of the [b]\\[hints][/] config
section (see `mario config show`). Hints come from the registered hint rules
(`mario plugins`); each one ends with a command to paste."""

MONITOR_HELP_TEXT = """\
[b]q[/]       quit the monitor (the run keeps training)
[b]?[/]       this help

This screen is read only: it tails the run's metrics.jsonl."""


class ConfirmQuit(ModalScreen[bool]):
    """Asks before stopping a training run."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "save and quit"),
        Binding("n,escape", "answer(False)", "keep training"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Save a checkpoint and stop training?", id="question")
            with Horizontal(id="buttons"):
                yield Button("Save and quit (y)", variant="error", id="yes")
                yield Button("Keep training (n)", variant="primary", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class HelpScreen(ModalScreen[None]):
    """The keys and what the panels mean."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss_help", "close")
    ]

    def __init__(self, read_only: bool = False) -> None:
        super().__init__()
        self.read_only = read_only

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(MONITOR_HELP_TEXT if self.read_only else HELP_TEXT, id="help")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
