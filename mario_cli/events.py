"""Typed events: the only thing the trainer tells the outside world.

Sinks (console, TUI, metrics.jsonl, TensorBoard, W&B) receive these and nothing
else, so the trainer never imports a UI library.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Episode:
    """One finished episode, the one shape it has from the env to the sinks: the env's
    ``info["episode"]``, the trainer's and the hints' rolling windows, and (with its
    step and env) the ``EpisodeEnd`` event."""

    episode_return: float
    length: int
    max_x_pos: int
    cleared: bool
    stage: str
    restart: bool = False  # began from a saved state (frontier restarts), not the stage start
    start_x: int = 0  # Mario's x when it began
    greedy: bool = False  # a training probe played by argmax (frontier restarts' greedy_share)

    @property
    def sampled_from_start(self) -> bool:
        """Began at the stage start and played by sampling: what ``rollout/*`` means."""
        return not (self.restart or self.greedy)

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Episode:
        """From :meth:`to_record`, or the plain dict of an older checkpoint."""
        data = dict(record)
        if "return" in data:
            data["episode_return"] = data.pop("return")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class Event:
    def to_record(self) -> dict[str, Any]:
        """A JSON-friendly dict with the event's type name under ``"type"``."""
        record = {"type": type(self).__name__}
        for f in dataclasses.fields(self):
            record[f.name] = getattr(self, f.name)
        return record


@dataclass(frozen=True)
class RunStarted(Event):
    run_name: str
    run_dir: str
    algo: str
    backbone: str
    device: str
    env_id: str
    n_envs: int
    total_timesteps: int
    start_step: int
    n_parameters: int
    resumed_from: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Notice(Event):
    """A one-line note for the user (a fallback taken, a setting adjusted)."""

    message: str


@dataclass(frozen=True)
class ActorEvent(Notice):
    """A Ray actor started collecting, was lost (process killed, machine gone) or replaced.

    A Notice, so every display shows its ``message`` as a line; metrics.jsonl keeps
    the fields.
    """

    step: int = 0
    actor: int = 0  # the slot: a replacement takes the lost actor's slot and env indices
    kind: str = "started"  # "started", "lost", "replaced"
    pid: int | None = None
    node: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class EpisodeEnd(Event):
    step: int
    env_index: int
    episode_return: float
    length: int
    max_x_pos: int
    cleared: bool
    stage: str
    restart: bool = False  # began from a saved state (frontier restarts), not the stage start
    start_x: int = 0  # Mario's x when it began
    greedy: bool = False  # a training probe played by argmax

    @classmethod
    def of(cls, step: int, env_index: int, episode: Episode) -> EpisodeEnd:
        return cls(
            step,
            env_index,
            episode.episode_return,
            episode.length,
            episode.max_x_pos,
            episode.cleared,
            episode.stage,
            episode.restart,
            episode.start_x,
            episode.greedy,
        )

    @property
    def episode(self) -> Episode:
        return Episode(
            self.episode_return,
            self.length,
            self.max_x_pos,
            self.cleared,
            self.stage,
            self.restart,
            self.start_x,
            self.greedy,
        )


@dataclass(frozen=True)
class IterationStats(Event):
    step: int
    iteration: int
    total_timesteps: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class CheckpointSaved(Event):
    step: int
    path: str
    kind: str  # "periodic", "best", "final", "interrupt", "manual"


@dataclass(frozen=True)
class Hint(Event):
    step: int
    rule: str
    severity: str  # "info", "warn", "bad"
    message: str
    command: str | None = None


@dataclass(frozen=True)
class RunFinished(Event):
    step: int
    status: str  # "finished", "interrupted", "failed"
    reason: str
    checkpoint: str | None
    resume_command: str | None
    summary: dict[str, float] = field(default_factory=dict)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        RunStarted,
        Notice,
        ActorEvent,
        EpisodeEnd,
        IterationStats,
        CheckpointSaved,
        Hint,
        RunFinished,
    )
}


def event_from_record(record: dict[str, Any]) -> Event | None:
    """Rebuild an event from a metrics.jsonl line (unknown types are skipped)."""
    cls = EVENT_TYPES.get(record.get("type", ""))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})
