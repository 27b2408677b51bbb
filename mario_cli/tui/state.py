"""What the screen shows, built from events; written by the event thread, read by the UI.

Events are folded into a ``RunState`` on the thread that produced them (the trainer's
or the metrics-file reader's), so no event is lost when the UI coalesces its refresh
messages; the UI renders a consistent ``snapshot()`` taken under the lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mario_cli import metric_names as names
from mario_cli.diagnostics import entropy_of
from mario_cli.events import (
    CheckpointSaved,
    EpisodeEnd,
    Event,
    Hint,
    IterationStats,
    Notice,
    RunFinished,
    RunStarted,
)


def _metric(key: str) -> Callable[[Mapping[str, float]], float | None]:
    return lambda metrics: metrics.get(key)


# Plotted series: title -> how to read it from an iteration's metrics.
PLOTS: dict[str, Callable[[Mapping[str, float]], float | None]] = {
    names.ROLLOUT_EP_REW_MEAN: _metric(names.ROLLOUT_EP_REW_MEAN),
    names.ROLLOUT_AVG_MAX_X_POS: _metric(names.ROLLOUT_AVG_MAX_X_POS),
    names.TRAIN_APPROX_KL: _metric(names.TRAIN_APPROX_KL),
    "entropy": entropy_of,
}
EPISODES_SHOWN = 12
HINTS_KEPT = 50
NOTICES_KEPT = 20


@dataclass
class RunView:
    """A copy of the state at one moment; the UI renders only this."""

    started: RunStarted | None = None
    latest: IterationStats | None = None
    series: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    episodes: list[EpisodeEnd] = field(default_factory=list)  # newest first
    hints: list[Hint] = field(default_factory=list)  # newest first
    notices: list[str] = field(default_factory=list)  # newest first
    checkpoint: CheckpointSaved | None = None
    finished: RunFinished | None = None
    iterations: int = 0
    version: int = 0


class RunState:
    """Thread-safe accumulation of a run's events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._started: RunStarted | None = None
            self._latest: IterationStats | None = None
            self._series: dict[str, tuple[list[float], list[float]]] = {
                name: ([], []) for name in PLOTS
            }
            self._episodes: deque[EpisodeEnd] = deque(maxlen=EPISODES_SHOWN)
            self._hints: deque[Hint] = deque(maxlen=HINTS_KEPT)
            self._notices: deque[str] = deque(maxlen=NOTICES_KEPT)
            self._checkpoint: CheckpointSaved | None = None
            self._finished: RunFinished | None = None
            self._iterations = 0
            self._version = getattr(self, "_version", 0) + 1

    def apply(self, event: Event) -> None:
        with self._lock:
            self._version += 1
            if isinstance(event, RunStarted):
                self._started = event
                self._finished = None  # a resumed session in the same metrics file
            elif isinstance(event, IterationStats):
                self._iteration(event)
            elif isinstance(event, EpisodeEnd):
                self._episodes.append(event)
            elif isinstance(event, Hint):
                self._hints.append(event)
            elif isinstance(event, Notice):
                self._notices.append(event.message)
            elif isinstance(event, CheckpointSaved):
                self._checkpoint = event
                self._notices.append(f"saved {event.kind} checkpoint {event.path}")
            elif isinstance(event, RunFinished):
                self._finished = event

    def _iteration(self, event: IterationStats) -> None:
        self._latest = event
        self._iterations += 1
        for name, read in PLOTS.items():
            value = read(event.metrics)
            if value is None:
                continue
            steps, values = self._series[name]
            # A resumed run restarts from its checkpoint's step: drop what came after it.
            while steps and steps[-1] >= event.step:
                steps.pop()
                values.pop()
            steps.append(float(event.step))
            values.append(float(value))

    def snapshot(self) -> RunView:
        with self._lock:
            return RunView(
                started=self._started,
                latest=self._latest,
                series={k: (list(s), list(v)) for k, (s, v) in self._series.items()},
                episodes=list(reversed(self._episodes)),
                hints=list(reversed(self._hints)),
                notices=list(reversed(self._notices)),
                checkpoint=self._checkpoint,
                finished=self._finished,
                iterations=self._iterations,
                version=self._version,
            )
