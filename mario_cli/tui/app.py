"""The live training screen (``mario train --ui tui``) and its read-only twin (``mario monitor``).

The trainer runs on a worker thread and knows nothing of this module: its events
reach the app through ``AppSink``, which folds them into a ``RunState`` and posts a
``RunUpdated`` message; consecutive ``RunUpdated`` messages collapse into one, so a
burst of events costs one redraw. Keys go back to the trainer through its
``TrainingControl``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Static

from mario_cli.config import HintsConfig, MarioConfig
from mario_cli.events import Event, RunFinished
from mario_cli.tui.screens import ConfirmQuit, HelpScreen
from mario_cli.tui.sources import (
    ControlLike,
    EventSink,
    MetricsFileSource,
    TrainerLike,
    TrainerSource,
)
from mario_cli.tui.state import PLOTS, RunState, RunView
from mario_cli.tui.widgets import (
    DiagnosticsTable,
    EpisodesTable,
    HintsPanel,
    MetricPlot,
    MetricsTable,
    RunHeader,
)

CSS = """
#header { height: 2; padding: 0 1; background: $boost; }
#body { height: 1fr; }
#left { width: 46; }
#metrics { height: 1fr; border: round $primary; }
#diagnostics { height: 8; border: round $primary; }
#right { width: 1fr; }
#plots { grid-size: 2 2; height: 1fr; }
MetricPlot { border: round $primary-darken-2; }
#episodes { height: 9; border: round $primary; }
#hints-box { height: 7; border: round $secondary; }
#hints { padding: 0 1; }
#status { height: 1; padding: 0 1; color: $text-muted; }
ConfirmQuit, HelpScreen { align: center middle; }
#dialog { width: 64; height: auto; padding: 1 2; border: thick $accent; background: $surface; }
HelpScreen #dialog { width: 90; }
#buttons { height: auto; margin-top: 1; }
#buttons Button { margin-right: 2; }
"""


class RunUpdated(Message):
    """The run state changed; when several are queued only the last is drawn."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunUpdated)


class SourceDone(Message):
    """The trainer returned (or raised), or the monitored run finished."""


@dataclass
class Outcome:
    """How the event source ended, read by the CLI after the app exits."""

    finished: RunFinished | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class AppSink:
    """The trainer-side sink: called on the trainer's thread, never raises into it."""

    def __init__(self, app: MarioApp) -> None:
        self.app = app

    def __call__(self, event: Event) -> None:
        try:
            self.app.state.apply(event)
        except Exception as exc:
            self.app.fail_from_thread(exc)
        self._notify()

    def reset(self) -> None:
        self.app.state.reset()
        self._notify()

    def close(self) -> None:
        pass

    def _notify(self) -> None:
        # RuntimeError: the app's loop is closed already; the CLI prints the summary.
        with contextlib.suppress(RuntimeError):
            self.app.post_message(RunUpdated())


class MarioApp(App[None]):
    """Header, metrics table, plots, diagnostics, hints and the last episodes."""

    CSS = CSS
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pause", "pause/resume"),
        Binding("s", "save", "save now"),
        Binding("q", "quit_run", "save & quit"),
        Binding("q", "leave", "quit"),  # the read-only monitor
        Binding("question_mark", "help", "help"),
        Binding("ctrl+c", "stop_now", "stop", show=False, priority=True),
    ]

    def __init__(self, source: Any, thresholds: HintsConfig, title: str = "mario") -> None:
        super().__init__()
        self.source = source
        self.control: ControlLike | None = getattr(source, "control", None)
        self.read_only = bool(source.read_only)
        self.thresholds = thresholds
        self.title = title
        self.state = RunState()
        self.sink: EventSink = AppSink(self)
        self.outcome = Outcome()
        self.ui_error: BaseException | None = None
        self._source_stop = threading.Event()
        self._drawn_version = -1
        self._drawn_latest: object = None

    # ---------------------------------------------------------------- layout
    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield _titled(MetricsTable(id="metrics"), "metrics")
                yield _titled(DiagnosticsTable(self.thresholds, id="diagnostics"), "diagnostics")
            with Vertical(id="right"):
                with Grid(id="plots"):
                    for metric in PLOTS:
                        yield MetricPlot(metric, id="plot-" + metric.replace("/", "-"))
                yield _titled(EpisodesTable(id="episodes"), "last episodes")
        with _titled(VerticalScroll(id="hints-box"), "hints"):
            yield HintsPanel(id="hints")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self._draw()
        self._run_source()
        # Pause and stop requests can come from signals too: keep the status current.
        self.set_interval(0.5, self._draw)

    # ---------------------------------------------------------- event source
    @work(thread=True, exit_on_error=False, name="events")
    def _run_source(self) -> None:
        try:
            self.outcome.finished = self.source.run(self.sink, self._source_stop)
        except BaseException as exc:
            self.outcome.error = exc
        finally:
            self.outcome.done.set()
            with contextlib.suppress(RuntimeError):
                self.post_message(SourceDone())

    def on_run_updated(self, _message: RunUpdated) -> None:
        self._draw()

    def on_source_done(self, _message: SourceDone) -> None:
        if self.outcome.error is not None or not self.read_only:
            self.exit()
        else:
            self._draw()

    def fail_from_thread(self, error: BaseException) -> None:
        """A display error on the trainer's thread: stop the run (it saves) and say why."""
        if self.ui_error is None:
            self.ui_error = error
            self.source.stop(f"the TUI failed ({type(error).__name__}: {error})")

    def on_unmount(self) -> None:
        self._source_stop.set()
        if self.read_only or self.outcome.done.is_set():
            return
        # The app is closing under a running trainer (a UI exception): the run must
        # save and stop, or the process would wait for it forever.
        error = self.ui_error or getattr(self, "_exception", None)
        if error is None:
            self.source.stop("the TUI closed")
            return
        reason = f"the TUI failed ({type(error).__name__}: {error})"
        self.source.stop(reason)
        # Printed after the traceback, while the process waits for the trainer to save.
        self.panic(Text(f"{reason}: saving a checkpoint and stopping the run…", "bold yellow"))

    # --------------------------------------------------------------- drawing
    def _draw(self) -> None:
        view = self.state.snapshot()
        self.query_one(RunHeader).show(view, self.status(view))
        if view.version != self._drawn_version:
            self._drawn_version = view.version
            metrics = view.latest.metrics if view.latest is not None else {}
            if view.latest is not self._drawn_latest:
                self._drawn_latest = view.latest
                self.query_one(MetricsTable).show(metrics)
                self.query_one(DiagnosticsTable).show(metrics)
                for plot in self.query(MetricPlot):
                    plot.show(*view.series[plot.metric])
            self.query_one(HintsPanel).show(view)
            self.query_one(EpisodesTable).show(view)
        self.query_one("#status", Static).update(self.status_line(view))

    def status(self, view: RunView) -> str:
        """One word or phrase: training, paused, stopping, finished, following."""
        if view.finished is not None:
            return f"{view.finished.status} ({view.finished.reason})"
        if self.outcome.error is not None:
            return f"failed ({type(self.outcome.error).__name__})"
        if self.control is not None:
            if self.control.stop_requested:
                reason = getattr(self.control, "stop_reason", "") or "stop requested"
                return f"stopping: {reason}; saving a checkpoint…"
            return "paused (p resumes)" if self.control.paused else "training"
        if isinstance(self.source, MetricsFileSource) and not self.source.waiting:
            return "reading metrics.jsonl…"
        return "following metrics.jsonl (read only)"

    def status_line(self, view: RunView) -> Text:
        line = Text()
        if view.notices:
            line.append(view.notices[0])
        if view.latest is not None:
            line.append(f"   iteration {view.latest.iteration:,}", style="dim")
        return line

    # --------------------------------------------------------------- actions
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pause", "save", "quit_run"):
            return not self.read_only
        if action == "leave":
            return self.read_only
        return True

    def action_leave(self) -> None:
        self.exit()

    def action_pause(self) -> None:
        if self.control is None:
            return
        paused = self.control.toggle_pause()
        self.notify("training paused: p resumes" if paused else "training resumed")
        self._draw()

    def action_save(self) -> None:
        if self.control is None:
            return
        self.control.request_save()
        self.notify("a checkpoint will be saved after this iteration")

    def action_quit_run(self) -> None:
        if self.outcome.done.is_set():
            self.exit()
            return
        if isinstance(self.screen, ModalScreen):
            return
        if self.control is not None and self.control.stop_requested:
            self.notify("already stopping: saving a checkpoint…")
            return
        self.push_screen(ConfirmQuit(), self._quit_confirmed)

    def _quit_confirmed(self, confirmed: bool | None) -> None:
        if confirmed:
            self.request_stop("quit from the TUI")

    def action_stop_now(self) -> None:
        if self.read_only or self.outcome.done.is_set():
            self.exit()
            return
        if isinstance(self.screen, ConfirmQuit):
            self.screen.dismiss(False)
        self.request_stop("Ctrl-C in the TUI")

    async def action_quit(self) -> None:
        # Textual's own quit key (ctrl+q) goes through the same save-first path.
        if self.read_only:
            self.exit()
        else:
            self.action_quit_run()

    def action_help(self) -> None:
        if not isinstance(self.screen, ModalScreen):
            self.push_screen(HelpScreen(read_only=self.read_only))

    def request_stop(self, reason: str) -> None:
        """Ask the trainer to save and stop; the app exits when it returns."""
        self.source.stop(reason)
        self._draw()


def _titled[W: Widget](widget: W, title: str) -> W:
    widget.border_title = title
    return widget


# ------------------------------------------------------------------ factories
def training_app(
    cfg: MarioConfig,
    control: ControlLike,
    make_trainer: Callable[[EventSink], TrainerLike],
) -> MarioApp:
    """The app ``mario train`` / ``mario resume`` run; ``make_trainer(sink)`` builds the trainer
    with the app's sink added to its sinks."""
    return MarioApp(TrainerSource(make_trainer, control), cfg.hints, title="mario train")


def monitor_app(
    metrics: Path,
    thresholds: HintsConfig,
    is_running: Callable[[], bool] | None = None,
    poll_interval: float = 0.5,
) -> MarioApp:
    """The read-only app ``mario monitor`` runs on a run's metrics.jsonl."""
    source = MetricsFileSource(metrics, poll_interval=poll_interval, is_running=is_running)
    return MarioApp(source, thresholds, title="mario monitor")
