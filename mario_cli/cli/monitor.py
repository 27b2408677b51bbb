"""``mario monitor``: the training screen, read only, from a run's metrics.jsonl."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mario_cli.cli.options import config_path_option
from mario_cli.config import MarioConfig, load_config, read_toml
from mario_cli.errors import ConfigError, MarioError


def monitor(
    run: str | None = typer.Argument(None, help="Run name or folder (default: the latest run)."),
    artifacts_dir: Path = typer.Option(Path("artifacts"), "--artifacts-dir", help="Runs root."),
    config: Path | None = config_path_option(),
) -> None:
    """Watch a run training in another terminal or on another machine (q quits).

    Replays the run's metrics.jsonl, then follows new lines until the run finishes.
    """
    from mario_cli.runs import resolve_run

    paths = resolve_run(run, artifacts_dir)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise MarioError(
            f"mario monitor needs a terminal; for curves in a file use `mario plot {paths.name}`"
        )
    cfg = monitor_config(paths.config, config)

    from mario_cli.tui.app import monitor_app

    app = monitor_app(paths.metrics, cfg.hints, is_running=lambda: paths.running_pid() is not None)
    app.run()
    if app.outcome.error is not None:
        raise app.outcome.error


def monitor_config(run_config: Path, config: Path | None) -> MarioConfig:
    """The run's saved config (its hint thresholds), under --config if given."""
    if run_config.is_file():
        try:
            return load_config(config, base=read_toml(run_config))
        except ConfigError:
            pass  # saved by another version: the thresholds fall back to the defaults
    return load_config(config)
