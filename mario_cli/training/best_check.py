"""Choosing ``best.pt`` by how ``mario eval`` will judge it: greedy play from the stage start.

Why: ``mario eval`` plays the policy's argmax, and the NES is deterministic, so greedy
play from one start is one fixed path. Eval's start protocol draws 0..30 no-op frames,
so the whole population of greedy eval episodes is 31 paths per stage. Playing all of
them gives the policy's eval clear rate exactly, with no sampling noise; the stochastic
training episodes that ``best.pt`` was chosen by before say little about it (measured
on 1-1: rollout clear rates of 10-20% next to greedy clear rates of 0% and 55%, and a
greedy clear rate that swung 55% -> 0% -> 35% -> 0% between 15-minute eval points).

A check plays every start, with the policy's eval mode (noisy heads off), in the
learner's own env without restarts, 8 starts at a time. It stops early once best.pt is
out of reach, or very likely so (:func:`out_of_reach`); a check that stops never saves.
A path that makes no progress for ``STALL_STEPS`` steps
is scored as it stands (greedy play stuck at a wall stays stuck until the time-out).
The env workers are idle during a check (in synchronous training; IMPALA's actor may
still be filling its one queued rollout), so the paths' envs step in one thread per
core: nes-py releases the GIL while it emulates, and each path has its own env.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mario_cli.config import MarioConfig
from mario_cli.eval_protocol import DEFAULT_NOOP_MAX

MAX_STEPS = 2500  # a 400-second stage at frame skip 4 is ~2,400 steps
STALL_STEPS = 80  # steps (5 s of game time) without a new max x: greedy play is stuck
SCREEN_STARTS = 8  # starts played before a check may stop on odds rather than certainty
SCREEN_MARGIN = 0.2
PARALLEL_PATHS = 8  # starts played in lockstep: batch-8 inference costs ~1/4 per sample
MAX_STARTS = 64  # the most starts one check plays (random-stage runs: fewer per stage)
# One clear in MAX_STARTS (15,625) outweighs any mean max x (stages are < 4,000 px long).
CLEAR_WEIGHT = 1_000_000


@dataclass
class ClearedPath:
    """A start greedy play cleared: the observations before each step and its actions."""

    stage: str  # the stage label, as repair keys its paths
    noop: int
    observations: list[np.ndarray]
    actions: list[int]


@dataclass
class _Path:
    """One start being played: its env, how far it got, and (to keep a clear) its steps."""

    stage: int
    noop: int
    env: Any
    life: int
    max_x: int = 0
    since_best: int = 0
    steps: int = 0
    observations: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)

    def advance(self, info: dict[str, Any], done: bool) -> tuple[bool, int] | None:
        """Take one step's info; (cleared, max x) once the path has ended, else None."""
        x = int(info["x_pos"])
        self.since_best = 0 if x > self.max_x else self.since_best + 1
        self.max_x = max(self.max_x, x)
        self.steps += 1
        if info.get("flag_get"):
            return True, self.max_x
        lost = int(info["life"]) < self.life
        if done or lost or self.since_best >= STALL_STEPS or self.steps >= MAX_STEPS:
            return False, self.max_x
        return None


@dataclass(frozen=True)
class GreedyScore:
    """What greedy play from the eval starts did: the basis of the ``best.pt`` choice."""

    starts: int  # eval starts in the check
    played: int  # starts played before the check could stop (== starts when complete)
    clears: int
    mean_max_x: float  # over the starts played
    seconds: float
    cleared: list[ClearedPath] = field(default_factory=list, compare=False, repr=False)

    @property
    def complete(self) -> bool:
        return self.played == self.starts

    @property
    def clear_rate(self) -> float:
        return self.clears / self.starts

    @property
    def value(self) -> float:
        """The ``best.pt`` score: the greedy clear rate first, then the mean max x."""
        return self.clear_rate * CLEAR_WEIGHT + self.mean_max_x

    def describe(self) -> str:
        if not self.complete:
            return (
                f"greedy cleared {self.clears} of the first {self.played} of {self.starts} "
                "eval starts: not going to beat best.pt, stopped"
            )
        return (
            f"greedy cleared {self.clears}/{self.starts} eval starts "
            f"(mean max x {self.mean_max_x:,.0f})"
        )


def eval_starts(stages: int, noop_max: int = DEFAULT_NOOP_MAX) -> list[tuple[int, int]]:
    """(stage index, no-op frames) of the starts a check plays: eval's 0..noop_max for
    each stage, or, with many stages, the same number of no-op counts spread evenly.

    In spread order (0, 16, 8, 24, 4, ... of 31): the first few starts played cover the
    range, so a policy that is not going to win shows it early.
    """
    per_stage = max(1, min(noop_max + 1, MAX_STARTS // stages))
    noops = sorted({round(i * noop_max / max(1, per_stage - 1)) for i in range(per_stage)})
    starts = [(s, noop) for s in range(stages) for noop in noops]
    bits = max(1, (len(starts) - 1).bit_length())
    order = sorted(range(len(starts)), key=lambda i: _reversed_bits(i, bits))
    return [starts[i] for i in order]


def _reversed_bits(value: int, bits: int) -> int:
    return int(format(value, f"0{bits}b")[::-1], 2)


def out_of_reach(ended: list[tuple[bool, int]], left: int, best_score: float | None) -> bool:
    """Whether the check can stop: best.pt cannot be beaten, or very likely will not be.

    Exact: too few starts are left to reach best.pt's clears. After ``SCREEN_STARTS``
    starts: a clear rate ``SCREEN_MARGIN`` below best.pt's (about a 5% chance with 8
    starts that a policy which would win shows it), or, while best.pt clears nothing, a
    mean max x 10% below its. Stopping early never saves, so at worst a better policy
    waits for the next check.
    """
    if best_score is None or not ended:
        return False
    total = len(ended) + left
    clears = sum(cleared for cleared, _ in ended)
    best_clears = clears_of(best_score, total)
    if clears + left < best_clears:
        return True
    if len(ended) < SCREEN_STARTS:
        return False
    if best_clears > 0:
        return clears / len(ended) < best_clears / total - SCREEN_MARGIN
    # best.pt clears nothing (its score is its mean max x): any clear beats it
    return clears == 0 and float(np.mean([x for _, x in ended])) < 0.9 * best_score


def clears_of(score: float, starts: int) -> int:
    """The clears inside a score of ``starts`` starts (the max x part is below one clear)."""
    return int(score / CLEAR_WEIGHT * starts + 1e-9)


class GreedyBestCheck:
    """Plays the policy greedily from every eval start and scores it for ``best.pt``."""

    def __init__(
        self,
        cfg: MarioConfig,
        policy: torch.nn.Module,
        device: torch.device,
        step_threads: int | None = None,
    ) -> None:
        from mario_cli.envs.factory import stage_specs

        self.cfg = cfg
        # Threads stepping the paths' envs (default: one per core, at most one per path).
        self.step_threads = min(PARALLEL_PATHS, step_threads or os.cpu_count() or 1)
        self.policy = policy
        self.device = device
        self.specs = stage_specs(cfg.env)
        self.starts = eval_starts(len(self.specs), cfg.train.best_noop_max)
        self.every = cfg.train.best_check_every
        self.next_check: int | None = None
        self.checks = 0
        self.seconds = 0.0
        self._envs: list[Any] = []  # every env made, for close()
        self._free: dict[int, list[Any]] = {}  # per stage: envs no path is playing
        self.keep_clears = False  # record the cleared paths (for greedy-path repair)
        self._cleared: list[ClearedPath] = []

    def clear_rate_of(self, score: float) -> float:
        """The greedy clear rate inside a saved ``best.pt`` score."""
        return clears_of(score, len(self.starts)) / len(self.starts)

    def due(self, global_step: int) -> bool:
        if self.next_check is None:  # the first check: at the first multiple of every
            self.next_check = -(-global_step // self.every) * self.every
        if global_step < self.next_check:
            return False
        self.next_check = (global_step // self.every + 1) * self.every
        return True

    def score(self, best_score: float | None) -> GreedyScore:
        """Play every start (or until ``best_score`` is out of reach, see :func:`out_of_reach`)."""
        began = time.perf_counter()
        threads = torch.get_num_threads()
        was_training = self.policy.training
        torch.set_num_threads(1)  # batch-8 inference; the paths' envs step on every core
        self.policy.eval()  # as eval plays it (noisy heads off)
        total = len(self.starts)
        try:
            ended = self._play_all(best_score)
        finally:
            self.policy.train(was_training)
            torch.set_num_threads(threads)
        seconds = time.perf_counter() - began
        self.checks += 1
        self.seconds += seconds
        clears = sum(cleared for cleared, _ in ended)
        mean_x = float(np.mean([x for _, x in ended]))
        return GreedyScore(total, len(ended), clears, mean_x, seconds, self._cleared)

    def _play_all(self, best_score: float | None) -> list[tuple[bool, int]]:
        """(cleared, max x) of each start played, ``PARALLEL_PATHS`` at a time in lockstep:
        one batched forward per step, then every path's env stepped, in threads."""
        queue = deque(self.starts)
        width = min(PARALLEL_PATHS, len(queue))
        paths: list[_Path | None] = [None] * width
        obs: np.ndarray | None = None
        starts = torch.ones(width, device=self.device)
        ended: list[tuple[bool, int]] = []
        self._cleared = []
        state = None

        def begin(row: int) -> None:
            nonlocal obs
            stage, noop = queue.popleft()
            env = self._take_env(stage)
            first, info = env.reset(options={"noop_frames": noop})
            if obs is None:
                obs = np.zeros((width, *np.shape(first)), dtype=np.uint8)
            obs[row] = first
            paths[row] = _Path(stage, noop, env, int(info["life"]))
            starts[row] = 1.0

        for row in range(width):
            begin(row)
        pool = ThreadPoolExecutor(self.step_threads) if self.step_threads > 1 else None
        try:
            while any(path is not None for path in paths):
                with torch.inference_mode():
                    batch = torch.from_numpy(obs).to(self.device)
                    actions, _, _, state = self.policy.act(batch, state, starts, deterministic=True)
                starts.zero_()
                live = [
                    (row, path, int(actions[row]))
                    for row, path in enumerate(paths)
                    if path is not None
                ]
                if self.keep_clears:
                    for row, path, action in live:
                        path.observations.append(obs[row].copy())
                        path.actions.append(action)
                # Every path steps before any outcome is read: each has its own env, so the
                # outcomes are the same as stepping them one by one.
                steps = [(path.env, action) for _, path, action in live]
                if pool is None:
                    stepped = _step_all(steps)
                else:  # one task per thread: per-task overhead and GIL hand-offs are per call
                    share = -(-len(steps) // self.step_threads)
                    chunks = [steps[i : i + share] for i in range(0, len(steps), share)]
                    stepped = [r for chunk in pool.map(_step_all, chunks) for r in chunk]
                for (row, path, _), result in zip(live, stepped, strict=True):
                    obs[row], _, terminated, truncated, info = result
                    outcome = path.advance(info, terminated or truncated)
                    if outcome is None:
                        continue
                    ended.append(outcome)
                    if outcome[0] and self.keep_clears:
                        label = self.specs[path.stage].label
                        self._cleared.append(
                            ClearedPath(label, path.noop, path.observations, path.actions)
                        )
                    self._free[path.stage].append(path.env)
                    paths[row] = None
                    left = len(queue) + sum(p is not None for p in paths)
                    if out_of_reach(ended, left, best_score):
                        return ended
                    if queue:
                        begin(row)
        finally:
            if pool is not None:
                pool.shutdown()
            for path in paths:
                if path is not None:
                    self._free[path.stage].append(path.env)
        return ended

    def _take_env(self, stage: int) -> Any:
        from mario_cli.envs import make_env
        from mario_cli.training.repair import stage_env_config

        free = self._free.setdefault(stage, [])
        if free:
            return free.pop()
        env = make_env(stage_env_config(self.cfg, self.specs[stage]))
        self._envs.append(env)
        return env

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs.clear()
        self._free.clear()


def _step_all(steps: list[tuple[Any, int]]) -> list[tuple[Any, ...]]:
    return [env.step(action) for env, action in steps]
