"""Where the screen's events come from: a live trainer, or a run's metrics.jsonl.

A source's ``run(sink, stop)`` is called on a worker thread and feeds every event
to ``sink``; it returns the run's ``RunFinished`` when there is one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mario_cli.events import Event, RunFinished, RunStarted, event_from_record


class EventSink(Protocol):
    def __call__(self, event: Event) -> None: ...

    def reset(self) -> None:
        """Forget everything seen so far (the metrics file was rewritten)."""


class TrainerLike(Protocol):
    def train(self) -> RunFinished: ...


class ControlLike(Protocol):
    """What the UI needs of ``mario_cli.training.trainer.TrainingControl``."""

    def request_stop(self, reason: str = ...) -> None: ...

    def request_save(self) -> None: ...

    def toggle_pause(self) -> bool: ...

    @property
    def paused(self) -> bool: ...

    @property
    def stop_requested(self) -> bool: ...


class TrainerSource:
    """Builds the trainer with the UI's sink and runs it; the control steers it."""

    read_only = False

    def __init__(
        self, make_trainer: Callable[[EventSink], TrainerLike], control: ControlLike
    ) -> None:
        self.make_trainer = make_trainer
        self.control = control

    def run(self, sink: EventSink, stop: threading.Event) -> RunFinished | None:
        return self.make_trainer(sink).train()

    def stop(self, reason: str) -> None:
        self.control.request_stop(reason)


class MetricsFileSource:
    """Tails a metrics.jsonl: replays it, then polls for new complete lines.

    Polling stops once the run has finished and no process is training it (a
    resumed run appends a new session to the same file).
    """

    read_only = True
    control = None

    def __init__(
        self,
        path: Path,
        poll_interval: float = 0.5,
        is_running: Callable[[], bool] | None = None,
    ) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.is_running = is_running or (lambda: False)
        self.waiting = False  # True once the file was read to its end

    def run(self, sink: EventSink, stop: threading.Event) -> RunFinished | None:
        offset, partial = 0, b""
        finished: RunFinished | None = None
        while not stop.is_set():
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = -1
            if 0 <= size < offset:
                # Truncated (a resume drops lines past its checkpoint): read it again.
                sink.reset()
                offset, partial, finished = 0, b"", None
            if size > offset:
                with self.path.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read(size - offset)
                offset += len(chunk)
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()  # an incomplete last line waits for its newline
                for line in lines:
                    event = _parse(line)
                    if event is None:
                        continue
                    if isinstance(event, RunStarted):
                        finished = None
                    elif isinstance(event, RunFinished):
                        finished = event
                    sink(event)
                continue  # drain the file before waiting
            self.waiting = True
            if finished is not None and not self.is_running():
                return finished
            stop.wait(self.poll_interval)
        return finished

    def stop(self, reason: str) -> None:
        pass  # the stop event passed to run() ends the polling


def _parse(line: bytes) -> Event | None:
    try:
        record: Any = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    try:
        return event_from_record(record)
    except TypeError:
        return None  # a record missing fields (written by another version)
