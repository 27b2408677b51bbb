"""Training health: metric readings with ok / warn / bad states, and the hint engine.

The engine keeps a short history of iterations and episodes, runs the registered
hint rules (``register_hints``) over it and returns only hints that are new, so a
rule that keeps firing is not repeated every iteration. Nothing here imports torch
or a UI library: the trainer, the TUI and ``mario monitor`` share it.
"""

from __future__ import annotations

import math
import shlex
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mario_cli import metric_names as names
from mario_cli.config import HintsConfig, MarioConfig
from mario_cli.events import (
    CheckpointSaved,
    Episode,
    EpisodeEnd,
    Event,
    Hint,
    IterationStats,
    RunStarted,
)

HintRule = Callable[["History", MarioConfig], list[Hint]]

OK, WARN, BAD, UNKNOWN = "ok", "warn", "bad", "n/a"
MAX_ITERATIONS = 1000  # iterations kept for the rules (more if a rule asks for a longer window)
MAX_EPISODES = 500  # episodes kept (likewise)
PROGRESS_BUCKETS = 50  # a progress window keeps about this many points, however long it is
CHECKPOINT_PLACEHOLDER = "<checkpoint>"


# ------------------------------------------------------------------ readings
@dataclass(frozen=True)
class Reading:
    """One diagnostic: a metric's latest value, its state and the thresholds used."""

    name: str
    value: float | None
    state: str  # ok, warn, bad or n/a
    warn: str  # the warning threshold, e.g. "> 0.05"
    bad: str


def entropy_of(metrics: Mapping[str, float]) -> float | None:
    """Policy entropy in nats: the negated ``train/entropy_loss``, as Stable-Baselines3 logs it."""
    loss = metrics.get(names.TRAIN_ENTROPY_LOSS)
    return None if loss is None else -float(loss)


def diagnose(metrics: Mapping[str, float], ui: HintsConfig) -> list[Reading]:
    """Readings for approx_kl, clip_fraction, entropy, explained_variance and value_loss,
    against the ``[hints]`` thresholds ``ui``.

    A metric is bad past its bad threshold, warn past its warn threshold, else ok;
    a non-finite value is bad and a missing one n/a.
    """
    # name, value, direction (+1: high is bad, -1: low is bad), warn, bad
    checks: list[tuple[str, float | None, int, float, float]] = [
        ("approx_kl", metrics.get(names.TRAIN_APPROX_KL), 1, ui.kl_warn, ui.kl_bad),
        (
            "clip_fraction",
            metrics.get(names.TRAIN_CLIP_FRACTION),
            1,
            ui.clip_fraction_warn,
            ui.clip_fraction_bad,
        ),
        ("entropy", entropy_of(metrics), -1, ui.entropy_warn, ui.entropy_bad),
        (
            "explained_variance",
            metrics.get(names.TRAIN_EXPLAINED_VARIANCE),
            -1,
            ui.explained_variance_warn,
            ui.explained_variance_bad,
        ),
        (
            "value_loss",
            metrics.get(names.TRAIN_VALUE_LOSS),
            1,
            ui.value_loss_warn,
            ui.value_loss_bad,
        ),
    ]
    readings = []
    for name, value, direction, warn, bad in checks:
        sign = ">" if direction > 0 else "<"
        if value is None:
            state = UNKNOWN
        elif not math.isfinite(value) or direction * (value - bad) > 0:
            state = BAD
        elif direction * (value - warn) > 0:
            state = WARN
        else:
            state = OK
        value = None if value is None else float(value)
        readings.append(Reading(name, value, state, f"{sign} {warn:g}", f"{sign} {bad:g}"))
    return readings


# ------------------------------------------------------------------- history
@dataclass
class StepWindow:
    """A metric's best value per bucket of agent steps, over the last ``steps`` agent steps.

    Points older than the window fold into ``best_before``, so it holds about
    ``steps / bucket`` points however many iterations the window spans (tiny rollouts
    make many). A bucket that straddles the window's start counts as recent.
    """

    steps: int = 100_000
    bucket: int = 100_000 // PROGRESS_BUCKETS
    points: deque[tuple[int, float]] = field(default_factory=deque)  # (last step, best)
    best_before: float | None = None  # the best value more than ``steps`` steps ago

    def add(self, step: int, value: float) -> None:
        if not math.isfinite(value):
            return
        if self.points and self.points[-1][0] // self.bucket == step // self.bucket:
            value = max(value, self.points.pop()[1])
        self.points.append((step, value))
        while self.points[0][0] <= step - self.steps:
            old = self.points.popleft()[1]
            self.best_before = old if self.best_before is None else max(self.best_before, old)

    @property
    def best_recent(self) -> float | None:
        """The best value within the last ``steps`` agent steps."""
        return max(value for _, value in self.points) if self.points else None


@dataclass
class History:
    """What hint rules see: recent iterations and episodes of one run, and its max x by step.

    It keeps as many iterations and episodes as the longest window a rule has asked for
    (at least ``MAX_ITERATIONS`` and ``MAX_EPISODES``): the engine runs every rule from
    the first iteration on, so each window is known before anything is dropped.
    """

    run_name: str | None = None
    checkpoint: str | None = None  # the run's latest checkpoint, when one was saved
    steps: list[int] = field(default_factory=list)  # global step of each iteration
    metrics: list[dict[str, float]] = field(default_factory=list)  # one dict per iteration
    episodes: deque[Episode] = field(default_factory=lambda: deque(maxlen=MAX_EPISODES))
    # rollout/avg_max_x_pos by agent step, over the window the last max_x_over asked for
    max_x: StepWindow = field(default_factory=StepWindow)
    longest: int = 0  # the longest window of iterations asked for

    @property
    def step(self) -> int:
        return self.steps[-1] if self.steps else 0

    def recent(self, n: int) -> list[dict[str, float]]:
        """The last ``n`` iterations' metrics, or [] while fewer than ``n`` were seen."""
        self.longest = max(self.longest, n)
        return self.metrics[-n:] if n > 0 and len(self.metrics) >= n else []

    def recent_episodes(self, n: int) -> list[Episode]:
        """The last ``n`` episodes, or [] while fewer than ``n`` ended."""
        if self.episodes.maxlen is not None and n > self.episodes.maxlen:
            self.episodes = deque(self.episodes, maxlen=n)
        return list(self.episodes)[-n:] if n > 0 and len(self.episodes) >= n else []

    def max_x_over(self, steps: int) -> StepWindow:
        """The best rollout/avg_max_x_pos by agent step over the last ``steps`` agent steps
        (a window of another length is rebuilt once from the iterations kept)."""
        if self.max_x.steps != steps:
            self.max_x = StepWindow(steps, max(1, steps // PROGRESS_BUCKETS))
            for step, metrics in zip(self.steps, self.metrics, strict=True):
                self.add_max_x(step, metrics)
        return self.max_x

    def add_max_x(self, step: int, metrics: Mapping[str, float]) -> None:
        max_x = metrics.get(names.ROLLOUT_AVG_MAX_X_POS)
        if max_x is not None:
            self.max_x.add(int(step), float(max_x))


def retry_command(history: History, cfg: MarioConfig, flags: Iterable[str]) -> str:
    """The line a hint suggests: a new run from the latest checkpoint's weights with
    ``flags`` changed (``mario resume --init-model-path ...``). Not the trainer's
    ``resume_command``, which continues the same run."""
    # The placeholder stays unquoted so the user sees what to replace.
    checkpoint = shlex.quote(history.checkpoint) if history.checkpoint else CHECKPOINT_PLACEHOLDER
    parts = ["mario resume --init-model-path", checkpoint]
    if cfg.train.artifacts_dir != Path("artifacts"):
        parts.append("--artifacts-dir " + shlex.quote(str(cfg.train.artifacts_dir)))
    return " ".join([*parts, *flags])


# -------------------------------------------------------------------- engine
class HintEngine:
    """Feeds registered hint rules and returns only new hints.

    A hint is identified by (registered rule name, ``Hint.rule``). Once emitted it is
    not emitted again while its rule keeps returning it, until ``hints.cooldown``
    iterations have passed; when the rule stops returning it, it may fire again.
    """

    def __init__(
        self,
        cfg: MarioConfig,
        rules: Iterable[Any] | Mapping[str, HintRule] | None = None,
    ) -> None:
        self.cfg = cfg
        self.history = History()
        self.rules = self._resolve_rules(rules)
        self.iterations = 0
        self._active: dict[tuple[str, str], int] = {}  # hint key -> iteration last emitted
        self._broken: set[str] = set()
        self._lock = threading.RLock()  # the trainer may feed it from more than one thread

    @staticmethod
    def _resolve_rules(rules: Any) -> dict[str, HintRule]:
        if rules is None:
            from mario_cli.plugins import get_host

            rules = get_host()["hints"]
        if isinstance(rules, Mapping):
            return dict(rules)
        return {name: rules.get(name) for name in rules.names()}

    # ---------------------------------------------------------------- feeding
    def add_iteration(self, step: int, metrics: Mapping[str, float]) -> None:
        with self._lock:
            history = self.history
            history.steps.append(int(step))
            history.metrics.append(dict(metrics))
            history.add_max_x(step, metrics)
            keep = max(MAX_ITERATIONS, history.longest)
            if len(history.metrics) > keep:
                del history.metrics[:-keep]
                del history.steps[:-keep]
            self.iterations += 1

    def add_episode(self, episode: Episode | EpisodeEnd) -> None:
        if isinstance(episode, EpisodeEnd):
            episode = episode.episode
        # Hints judge sampled stage-start episodes only: a frontier restart begins
        # part-way in, a greedy probe plays another policy.
        if not episode.sampled_from_start:
            return
        with self._lock:
            self.history.episodes.append(episode)

    def set_checkpoint(self, path: str | Path) -> None:
        with self._lock:
            self.history.checkpoint = str(path)

    def observe(self, event: Event) -> list[Hint]:
        """Feed any trainer event; after an IterationStats, return the new hints."""
        if isinstance(event, RunStarted):
            with self._lock:
                self.history.run_name = event.run_name
        elif isinstance(event, EpisodeEnd):
            self.add_episode(event)
        elif isinstance(event, CheckpointSaved):
            self.set_checkpoint(event.path)
        elif isinstance(event, IterationStats):
            self.add_iteration(event.step, event.metrics)
            return self.check(event.step)
        return []

    # --------------------------------------------------------------- checking
    def check(self, step: int) -> list[Hint]:
        """Run every rule on the history; return the hints not already emitted."""
        with self._lock:
            return self._check(step)

    def _check(self, step: int) -> list[Hint]:
        fired: dict[tuple[str, str], Hint] = {}
        new: list[Hint] = []
        for name, rule in self.rules.items():
            if name in self._broken:
                continue
            try:
                hints = list(rule(self.history, self.cfg) or [])
            except Exception as exc:
                # A broken third-party rule must not stop a training run.
                self._broken.add(name)
                new.append(
                    Hint(
                        step,
                        name,
                        WARN,
                        f"hint rule {name!r} failed ({type(exc).__name__}: {exc}); "
                        "it is off for the rest of this run",
                    )
                )
                continue
            for hint in hints:
                fired[(name, hint.rule)] = hint if hint.step == step else _at_step(hint, step)
        for key in list(self._active):
            if key not in fired:
                del self._active[key]  # cleared: it may fire again later
        for key, hint in fired.items():
            last = self._active.get(key)
            if last is None or self.iterations - last >= self.cfg.hints.cooldown:
                self._active[key] = self.iterations
                new.append(hint)
        return new


def _at_step(hint: Hint, step: int) -> Hint:
    return Hint(step, hint.rule, hint.severity, hint.message, hint.command)
