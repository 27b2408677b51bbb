"""``mario runs``: the runs on disk, or one run in detail."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.syntax import Syntax
from rich.table import Table

from mario_cli.cli.console import console

STATUS_STYLE = {
    "running": "bold cyan",
    "finished": "green",
    "interrupted": "yellow",
    "failed": "red",
    "crashed": "red",
}


def runs(
    run: str | None = typer.Argument(None, help="Show one run's config and checkpoints."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    artifacts_dir: Path = typer.Option(Path("artifacts"), "--artifacts-dir", help="Runs root."),
) -> None:
    """List runs with algorithm, progress, last metrics, best checkpoint and status."""
    from mario_cli.run_summary import summarise_run
    from mario_cli.runs import list_runs, resolve_run

    if run is not None:
        paths = resolve_run(run, artifacts_dir)
        summary = summarise_run(paths)
        if as_json:
            data = summary.to_dict()
            data["config"] = paths.config.read_text() if paths.config.is_file() else None
            print(json.dumps(data))
            return
        console.print(f"[bold]{summary.name}[/] ({summary.status}) {summary.path}")
        if paths.config.is_file():
            console.print(Syntax(paths.config.read_text(), "toml", background_color="default"))
        table = Table(title="checkpoints")
        table.add_column("step", justify="right")
        table.add_column("file")
        for item in summary.checkpoints:
            step = f"{item['step']:,}" if item["step"] is not None else "-"
            table.add_row(step, item["path"])
        console.print(table)
        return

    summaries = [summarise_run(p) for p in list_runs(artifacts_dir)]
    if as_json:
        print(json.dumps([s.to_dict() for s in summaries]))
        return
    if not summaries:
        console.print(f"no runs under {artifacts_dir}; start one with `mario train`")
        return
    table = Table(title=f"runs in {artifacts_dir}")
    for column in ("run", "algo", "steps", "ep_rew_mean", "avg max x", "best", "status"):
        table.add_column(column, justify="left" if column in ("run", "algo") else "right")
    for s in summaries:
        total = f"/{s.total_timesteps:,}" if s.total_timesteps else ""
        table.add_row(
            s.name,
            s.algo or "-",
            f"{s.steps:,}{total}",
            f"{s.ep_rew_mean:.1f}" if s.ep_rew_mean is not None else "-",
            f"{s.avg_max_x_pos:.0f}" if s.avg_max_x_pos is not None else "-",
            "yes" if s.best_checkpoint else "-",
            f"[{STATUS_STYLE.get(s.status, '')}]{s.status}[/]",
        )
    console.print(table)
