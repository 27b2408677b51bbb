"""The panels of the training screen; each renders from a ``RunView``."""

from __future__ import annotations

import re

from rich.text import Text
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from mario_cli import metric_names as names
from mario_cli.config import HintsConfig
from mario_cli.diagnostics import BAD, OK, WARN, diagnose
from mario_cli.events import Hint
from mario_cli.sinks.console import GROUPS, format_value
from mario_cli.tui.state import RunView

STATE_STYLES = {OK: "green", WARN: "yellow", BAD: "bold red"}
SEVERITY_STYLES = {"info": "cyan", "warn": "yellow", "bad": "bold red"}
MAX_PLOT_POINTS = 400
SHORT_NAMES = {
    "approx_kl": "approx kl",
    "clip_fraction": "clip frac",
    "explained_variance": "expl var",
    "value_loss": "value loss",
}


def stage_of(view: RunView) -> str:
    """The stage being played: the last episode's, else the one in the env id."""
    if view.episodes:
        return view.episodes[0].stage
    if view.started is None:
        return "-"
    match = re.search(r"(\d+-\d+)", view.started.env_id)
    return match.group(1) if match else view.started.env_id


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class RunHeader(Static):
    """Run, algorithm, backbone, device, stage; steps, speed, ETA and run status."""

    def show(self, view: RunView, status: str) -> None:
        started = view.started
        line1 = Text()
        line1.append("mario ", style="bold")
        if started is None:
            line1.append("waiting for the run to start…", style="dim")
        else:
            line1.append(started.run_name, style="bold cyan")
            line1.append(
                f"  {started.algo} + {started.backbone}  ·  {started.device}  ·  "
                f"stage {stage_of(view)}  ·  {started.n_envs} envs"
            )
        line2 = Text()
        total = started.total_timesteps if started else 0
        step = started.start_step if started else 0
        fps = 0.0
        if view.latest is not None:
            step, total = view.latest.step, view.latest.total_timesteps
            fps = float(view.latest.metrics.get(names.TIME_FPS, 0.0))
        percent = f" ({100 * step / total:.1f}%)" if total else ""
        running = view.finished is None and fps > 0 and total > step
        eta = format_duration((total - step) / fps) if running else "-"
        line2.append(f"steps {step:,} / {total:,}{percent}  ·  {fps:,.0f} steps/s  ·  ETA {eta}")
        line2.append("  ·  ")
        line2.append(status, style="bold yellow" if status != "training" else "bold green")
        self.update(Text("\n").join([line1, line2]))


class MetricsTable(DataTable):
    """The grouped rollout / time / train table, Stable-Baselines3 names."""

    def on_mount(self) -> None:
        self.cursor_type = "none"
        self.show_header = False
        self.add_column("metric", key="metric")
        self.add_column("value", key="value")
        self._keys: list[str] = []

    def show(self, metrics: dict[str, float]) -> None:
        keys = [
            key
            for group in GROUPS
            for key in sorted(k for k in metrics if k.startswith(group + "/"))
        ]
        if keys != self._keys:
            self.clear()
            for group in GROUPS:
                group_keys = [k for k in keys if k.startswith(group + "/")]
                if not group_keys:
                    continue
                self.add_row(Text(f"{group}/", style="bold"), "", key=f"{group}/")
                for key in group_keys:
                    label = Text("  " + key.split("/", 1)[1], style="cyan")
                    self.add_row(label, self._cell(metrics[key]), key=key)
            self._keys = keys
            return
        for key in keys:
            self.update_cell(key, "value", self._cell(metrics[key]))

    @staticmethod
    def _cell(value: float) -> Text:
        return Text(format_value(value), justify="right")

    def value_of(self, key: str) -> str:
        """The text shown for ``key`` (tests and the monitor compare it)."""
        return str(self.get_cell(key, "value"))


class MetricPlot(PlotextPlot):
    """One metric over steps."""

    def __init__(self, metric: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.metric = metric
        self.points = 0

    def on_mount(self) -> None:
        self.show([], [])

    def show(self, steps: list[float], values: list[float]) -> None:
        self.points = len(steps)
        if len(steps) > MAX_PLOT_POINTS:
            stride = -(-len(steps) // MAX_PLOT_POINTS)
            steps, values = steps[::stride] + steps[-1:], values[::stride] + values[-1:]
        plt = self.plt
        plt.clear_figure()
        plt.title(self.metric)
        if steps:
            plt.plot(steps, values, marker="braille")
        self.refresh()


class DiagnosticsTable(DataTable):
    """approx_kl, clip_fraction, entropy, explained_variance, value_loss: ok / warn / bad."""

    def __init__(self, thresholds: HintsConfig, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.thresholds = thresholds
        self.states: dict[str, str] = {}

    def on_mount(self) -> None:
        self.cursor_type = "none"
        for column in ("metric", "value", "state", "warn", "bad"):
            self.add_column(column, key=column)
        self.show({})

    def show(self, metrics: dict[str, float]) -> None:
        first = not self.states
        for reading in diagnose(metrics, self.thresholds):
            value = "-" if reading.value is None else format_value(reading.value)
            state = Text(reading.state, style=STATE_STYLES.get(reading.state, "dim"))
            self.states[reading.name] = reading.state
            if first:
                label = SHORT_NAMES.get(reading.name, reading.name)
                self.add_row(label, value, state, reading.warn, reading.bad, key=reading.name)
            else:
                self.update_cell(reading.name, "value", value)
                self.update_cell(reading.name, "state", state)


class HintsPanel(Static):
    """Hints from the registered rules, newest first, each with the command to try."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.hints: list[Hint] = []
        self.text = Text()

    def show(self, view: RunView) -> None:
        self.hints = list(view.hints)
        if not view.hints:
            self.text = Text("no hints so far (the hint rules check every iteration)", "dim")
        else:
            parts = []
            for hint in view.hints:
                part = Text()
                part.append(f"{hint.rule}", style=SEVERITY_STYLES.get(hint.severity, "bold"))
                part.append(f" (step {hint.step:,}) ", style="dim")
                part.append(hint.message)
                if hint.command:
                    part.append("\n  try: ", style="dim")
                    part.append(hint.command, style="bold")
                parts.append(part)
            self.text = Text("\n").join(parts)
        self.update(self.text)


class EpisodesTable(DataTable):
    """The last episodes, newest first."""

    COLUMNS = ("step", "env", "return", "length", "max x", "cleared", "stage")

    def on_mount(self) -> None:
        self.cursor_type = "none"
        for column in self.COLUMNS:
            self.add_column(column, key=column)

    def show(self, view: RunView) -> None:
        self.clear()
        for episode in view.episodes:
            self.add_row(
                f"{episode.step:,}",
                str(episode.env_index),
                f"{episode.episode_return:.1f}",
                str(episode.length),
                str(episode.max_x_pos),
                Text("yes", style="bold green") if episode.cleared else Text("no", style="dim"),
                episode.stage,
            )
