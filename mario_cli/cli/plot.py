"""``mario plot``: compare runs' curves in one PNG."""

from __future__ import annotations

from pathlib import Path

import typer

from mario_cli import metric_names as names
from mario_cli.cli.console import console
from mario_cli.errors import ConfigError


def plot(
    runs: list[str] = typer.Argument(..., help="Run names or folders to compare."),
    metric: list[str] = typer.Option(
        [names.ROLLOUT_AVG_MAX_X_POS], "--metric", "-m", help="Metric to plot (repeatable)."
    ),
    x: str = typer.Option("steps", "--x", help="x axis: steps or time."),
    output: Path | None = typer.Option(None, "--output", "-o", help="PNG path."),
    smoothing: float = typer.Option(0.6, "--smoothing", help="EMA weight in [0, 1)."),
    artifacts_dir: Path = typer.Option(Path("artifacts"), "--artifacts-dir", help="Runs root."),
) -> None:
    """Plot metrics from each run's metrics.jsonl, runs overlaid and smoothed."""
    from mario_cli.plotting import plot_runs
    from mario_cli.runs import resolve_run

    if x not in ("steps", "time"):
        raise ConfigError(f"--x {x!r} is not steps or time")
    if not 0 <= smoothing < 1:
        raise ConfigError("--smoothing must be in [0, 1)")
    resolved = [resolve_run(name, artifacts_dir) for name in runs]
    target = output or artifacts_dir / "plots" / f"{'_vs_'.join(r.name for r in resolved)}.png"
    path = plot_runs(resolved, metric, x, target, smoothing)
    console.print(f"wrote {path}", highlight=False)
