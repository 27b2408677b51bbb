"""TensorBoard: scalars per iteration, hints and notices as text, on the global step axis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mario_cli.events import (
    EpisodeEnd,
    Event,
    Hint,
    IterationStats,
    Notice,
    RunFinished,
    RunStarted,
)
from mario_cli.runs import RunPaths


class TensorBoardSink:
    def __init__(self) -> None:
        self._writer: Any = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            from torch.utils.tensorboard import SummaryWriter

            self.close()
            # purge_step drops events a killed run wrote after its last checkpoint.
            purge = event.start_step + 1 if event.resumed_from else None
            folder = RunPaths(Path(event.run_dir)).tensorboard
            self._writer = SummaryWriter(str(folder), purge_step=purge)
            return
        writer = self._writer
        if writer is None:
            return
        if isinstance(event, IterationStats):
            for key, value in event.metrics.items():
                writer.add_scalar(key, value, event.step)
        elif isinstance(event, EpisodeEnd):
            writer.add_scalar("episode/max_x_pos", event.max_x_pos, event.step)
        elif isinstance(event, Hint):
            writer.add_text("hints", f"**{event.rule}**: {event.message}", event.step)
        elif isinstance(event, Notice):
            writer.add_text("notices", event.message)
        elif isinstance(event, RunFinished):
            writer.flush()
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
