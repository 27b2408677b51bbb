"""Weights & Biases (optional extra `wandb`): iteration metrics and hints, on the global step."""

from __future__ import annotations

from typing import Any

from mario_cli.errors import MarioError
from mario_cli.events import Event, Hint, IterationStats, RunFinished, RunStarted


class WandbSink:
    def __init__(self) -> None:
        try:
            import wandb
        except ImportError:
            raise MarioError(
                "--wandb needs the wandb package: pip install -e '.[wandb]' (or drop --wandb)"
            ) from None
        self._wandb = wandb
        self._run: Any = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            # Resuming continues the same W&B run: its id is the mario run name.
            self._run = self._wandb.init(
                project="mario",
                name=event.run_name,
                id=event.run_name,
                resume="allow",
                dir=event.run_dir,
                config=event.config,
            )
        elif self._run is None:
            return
        elif isinstance(event, IterationStats):
            self._run.log(event.metrics, step=event.step)
        elif isinstance(event, Hint):
            self._run.log({"hints": f"{event.rule}: {event.message}"}, step=event.step)
        elif isinstance(event, RunFinished):
            self._run.summary.update({"status": event.status, **event.summary})
            self.close()

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
