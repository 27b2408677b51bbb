"""The plain console display: a progress bar and the grouped metrics table per iteration."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mario_cli import metric_names as names
from mario_cli.events import (
    CheckpointSaved,
    Event,
    Hint,
    IterationStats,
    Notice,
    RunFinished,
    RunStarted,
)

GROUPS = ("rollout", "time", "train", "replay", "repair", "best", "actors")


def metrics_table(metrics: dict[str, float], title: str | None = None) -> Table:
    """Stable-Baselines3's grouped layout: rollout/, time/, train/."""
    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column("key", style="cyan")
    table.add_column("value", justify="right")
    for group in GROUPS:
        keys = sorted(k for k in metrics if k.startswith(group + "/"))
        if not keys:
            continue
        table.add_row(f"[bold]{group}/[/]", "")
        for key in keys:
            table.add_row(f"  {key.split('/', 1)[1]}", format_value(metrics[key]))
    return table


def format_value(value: float) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.3g}"
    return f"{int(value):,}"


class ConsoleSink:
    """``plain``: progress bar + table each iteration; ``quiet``: the final summary only."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._started(event)
        elif isinstance(event, IterationStats):
            self._iteration(event)
        elif isinstance(event, Notice) and not self.quiet:
            self._print(f"[yellow]note:[/] {event.message}")
        elif isinstance(event, Hint) and not self.quiet:
            command = f"\n  try: [bold]{event.command}[/]" if event.command else ""
            self._print(f"[magenta]hint ({event.rule}):[/] {event.message}{command}")
        elif isinstance(event, CheckpointSaved) and not self.quiet and event.kind != "best":
            self._print(f"[dim]saved {event.kind} checkpoint {event.path}[/]")
        elif isinstance(event, RunFinished):
            self._finished(event)

    def _print(self, text: str) -> None:
        (self.progress.console if self.progress else self.console).print(text, highlight=False)

    def _started(self, event: RunStarted) -> None:
        if self.quiet:
            return
        verb = "resuming" if event.resumed_from else "training"
        self.console.print(
            f"[bold]{verb}[/] {event.run_name}: {event.algo} + {event.backbone} on "
            f"{event.env_id}, {event.n_envs} envs, {event.device}, "
            f"{event.n_parameters:,} parameters -> {event.run_dir}",
            highlight=False,
        )
        self.progress = Progress(
            TextColumn("[bold blue]steps"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,}"),
            TextColumn("[cyan]{task.fields[fps]} steps/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.progress.add_task(
            "train", total=event.total_timesteps, completed=event.start_step, fps="-"
        )
        self.progress.start()

    def _iteration(self, event: IterationStats) -> None:
        if self.quiet or self.progress is None:
            return
        fps = event.metrics.get(names.TIME_FPS, 0.0)
        self.progress.update(self.task, completed=event.step, fps=f"{fps:,.0f}")
        self.progress.console.print(metrics_table(event.metrics))

    def _finished(self, event: RunFinished) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        colour = {"finished": "green", "interrupted": "yellow"}.get(event.status, "red")
        self.console.print(
            f"[bold {colour}]{event.status}[/] at step {event.step:,}: {event.reason}",
            highlight=False,
        )
        if event.summary:
            self.console.print(metrics_table(event.summary))
        if event.checkpoint:
            self.console.print(f"checkpoint: {event.checkpoint}", highlight=False)
        if event.resume_command:
            self.console.print(f"resume with: [bold]{event.resume_command}[/]", highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
