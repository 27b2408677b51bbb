"""``mario train`` and ``mario resume``."""

from __future__ import annotations

import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from mario_cli.cli.console import console
from mario_cli.cli.options import config_options, config_path_option
from mario_cli.config import MarioConfig, load_config
from mario_cli.errors import MarioError
from mario_cli.runs import RunPaths


@config_options()
def train(config: Path | None = config_path_option(), overrides: dict | None = None) -> None:
    """Train an agent (defaults: PPO on 1-1, see `mario config show`)."""
    cfg = load_config(config, overrides)
    run_training(cfg)


@config_options()
def resume(
    target: str | None = typer.Argument(
        None, help="Run name, run folder or checkpoint file (default: the latest run)."
    ),
    config: Path | None = config_path_option(),
    overrides: dict | None = None,
) -> None:
    """Continue a run from its newest checkpoint, or start a new run from its weights.

    Flags override the run's saved config. With --init-model-path a new run starts from
    that checkpoint's weights instead.
    """
    from mario_cli.runs import resolve_run
    from mario_cli.training.checkpoint import CheckpointManager, load_checkpoint

    overrides = overrides or {}
    artifacts = Path(overrides.get("train", {}).get("artifacts_dir", "artifacts"))
    init_path = overrides.get("train", {}).get("init_model_path")
    if init_path is not None and target is not None:
        raise MarioError(
            f"pass either a run to continue ({target}) or --init-model-path to start a new run "
            "from those weights, not both"
        )
    if init_path is not None:
        state = load_checkpoint(Path(init_path))
        cfg = load_config(config, overrides, base=_fresh_run_config(state["config"]))
        run_training(cfg)
        return

    checkpoint = _resolve_checkpoint(target, artifacts, resolve_run, CheckpointManager)
    state = load_checkpoint(checkpoint)
    cfg = load_config(config, overrides, base=state["config"])
    if int(state["global_step"]) >= cfg.train.total_timesteps:
        raise MarioError(
            f"{checkpoint} already reached total_timesteps={cfg.train.total_timesteps:,}; "
            "pass a larger --total-timesteps to train further"
        )
    run_training(cfg, resume_from=checkpoint)


def _fresh_run_config(saved: dict[str, Any]) -> dict[str, Any]:
    saved = {section: dict(values) for section, values in saved.items()}
    saved["train"].pop("run_name", None)
    return saved


def _resolve_checkpoint(target: str | None, artifacts: Path, resolve_run, manager_cls) -> Path:
    if target is not None and Path(target).is_file():
        path = Path(target)
        if RunPaths.of_checkpoint(path) is None:
            raise MarioError(
                f"{path} is not in a run's checkpoints/ folder, so there is no run to continue; "
                f"start a new run from its weights: mario resume --init-model-path {path}"
            )
        return path
    if target is not None and target.endswith(".pt"):
        raise MarioError(f"checkpoint {target} not found; list runs with `mario runs`")
    run = resolve_run(target, artifacts)
    checkpoint = manager_cls(run.root, keep=1_000_000).latest()
    if checkpoint is None:
        raise MarioError(f"run {run.name} has no checkpoint yet; start it again with `mario train`")
    return checkpoint


@contextmanager
def _stop_on_signals(control: Any):
    """First Ctrl-C or SIGTERM: finish the step, save, exit 0. Another Ctrl-C: stop at once.

    A repeat within a second is the same Ctrl-C delivered twice (``timeout`` and some
    terminals signal both the process and its group), not the user pressing it again.
    """
    first: list[float] = []

    def on_signal(signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if control.stop_requested:
            if signum == signal.SIGINT and first and now - first[0] > 1.0:
                raise KeyboardInterrupt
            return
        first.append(now)
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        control.request_stop(f"{name} received")
        console.print(
            f"[yellow]{name}: saving a checkpoint after this step (Ctrl-C again to stop at once)[/]"
        )

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_sinks(cfg: MarioConfig) -> list[Any]:
    from mario_cli.sinks.console import ConsoleSink
    from mario_cli.sinks.tensorboard import TensorBoardSink

    sinks: list[Any] = [TensorBoardSink()]  # the trainer itself writes metrics.jsonl
    if cfg.train.wandb:
        from mario_cli.sinks.wandb import WandbSink

        sinks.append(WandbSink())
    sinks.append(ConsoleSink(console, quiet=cfg.ui.mode == "quiet"))
    return sinks


def run_training(cfg: MarioConfig, resume_from: Path | None = None) -> None:
    """Train with the chosen display (tui, plain or quiet); exit 1 if the run failed.

    ``--ui auto`` shows the TUI when stdin and stdout are a terminal, else the plain
    display; the TUI module (and textual) is imported only when it is shown.
    """
    from mario_cli.training.trainer import Trainer, TrainingControl

    control = TrainingControl()
    sinks = build_sinks(cfg)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    use_tui = cfg.ui.mode == "tui" or (cfg.ui.mode == "auto" and interactive)
    if use_tui and not interactive:
        console.print("[yellow]note:[/] --ui tui needs a terminal; showing the plain display")
        use_tui = False
    try:
        if use_tui:
            from mario_cli.sinks.console import ConsoleSink
            from mario_cli.tui.run import train_in_tui

            # The screen replaces the console display; the summary is printed after it.
            sinks = [sink for sink in sinks if not isinstance(sink, ConsoleSink)]

            def make_trainer(ui_sink: Any) -> Trainer:
                return Trainer(cfg, [*sinks, ui_sink], control, resume_from=resume_from)

            with _stop_on_signals(control):
                finished = train_in_tui(cfg, control, make_trainer, console)
        else:
            trainer = Trainer(cfg, sinks, control, resume_from=resume_from)
            with _stop_on_signals(control):
                finished = trainer.train()
    finally:
        for sink in sinks:
            sink.close()
    if finished.status == "failed":
        sys.exit(1)
