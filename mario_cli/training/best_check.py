"""Choosing ``best.pt`` by how ``mario eval`` will judge it: greedy play from the stage start.

Why: ``mario eval`` plays the policy's argmax, and the NES is deterministic, so greedy
play from one start is one fixed path. Eval's start protocol draws 0..30 no-op frames,
so the whole population of greedy eval episodes is 31 paths per stage. Playing all of
them gives the policy's eval clear rate exactly, with no sampling noise; the stochastic
training episodes that ``best.pt`` was chosen by before say little about it (measured
on 1-1: rollout clear rates of 10-20% next to greedy clear rates of 0% and 55%, and a
greedy clear rate that swung 55% -> 0% -> 35% -> 0% between 15-minute eval points).

A check plays every start, with the policy's eval mode (noisy heads off), in the
learner's own env without restarts. It stops early once even clearing every start left
could not beat the best so far. A path that makes no progress for ``STALL_STEPS`` steps
is scored as it stands (greedy play stuck at a wall stays stuck until the time-out).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mario_cli.config import MarioConfig
from mario_cli.eval_protocol import DEFAULT_NOOP_MAX

MAX_STEPS = 2500  # a 400-second stage at frame skip 4 is ~2,400 steps
STALL_STEPS = 80  # steps (5 s of game time) without a new max x: greedy play is stuck
MAX_STARTS = 64  # the most starts one check plays (random-stage runs: fewer per stage)
# One clear in MAX_STARTS (15,625) outweighs any mean max x (stages are < 4,000 px long).
CLEAR_WEIGHT = 1_000_000


@dataclass(frozen=True)
class GreedyScore:
    """What greedy play from the eval starts did: the basis of the ``best.pt`` choice."""

    starts: int  # eval starts in the check
    played: int  # starts played before the check could stop (== starts when complete)
    clears: int
    mean_max_x: float  # over the starts played
    seconds: float

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
                "eval starts: cannot beat best.pt, stopped"
            )
        return (
            f"greedy cleared {self.clears}/{self.starts} eval starts "
            f"(mean max x {self.mean_max_x:,.0f})"
        )


def eval_starts(stages: int, noop_max: int = DEFAULT_NOOP_MAX) -> list[tuple[int, int]]:
    """(stage index, no-op frames) of the starts a check plays: eval's 0..noop_max for
    each stage, or, with many stages, the same number of no-op counts spread evenly."""
    per_stage = max(1, min(noop_max + 1, MAX_STARTS // stages))
    noops = sorted({round(i * noop_max / max(1, per_stage - 1)) for i in range(per_stage)})
    return [(s, noop) for s in range(stages) for noop in noops]


def clears_of(score: float, starts: int) -> int:
    """The clears inside a score of ``starts`` starts (the max x part is below one clear)."""
    return int(score / CLEAR_WEIGHT * starts + 1e-9)


class GreedyBestCheck:
    """Plays the policy greedily from every eval start and scores it for ``best.pt``."""

    def __init__(self, cfg: MarioConfig, policy: torch.nn.Module, device: torch.device) -> None:
        from mario_cli.envs.factory import stage_specs

        self.cfg = cfg
        self.policy = policy
        self.device = device
        self.specs = stage_specs(cfg.env)
        self.starts = eval_starts(len(self.specs), cfg.train.best_noop_max)
        self.every = cfg.train.best_check_every
        self.next_check: int | None = None
        self.checks = 0
        self.seconds = 0.0
        self._envs: dict[int, Any] = {}

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
        """Play every start (or until ``best_score`` is out of reach)."""
        began = time.perf_counter()
        threads = torch.get_num_threads()
        was_training = self.policy.training
        torch.set_num_threads(1)  # batch-1 inference: a second thread only waits
        self.policy.eval()  # as eval plays it (noisy heads off)
        clears, max_xs = 0, []
        total = len(self.starts)
        best_clears = None if best_score is None else clears_of(best_score, total)
        try:
            for k, (stage, noop) in enumerate(self.starts):
                cleared, max_x = self._play(stage, noop)
                clears += cleared
                max_xs.append(max_x)
                left = total - k - 1
                if best_clears is not None and clears + left < best_clears:
                    break
        finally:
            self.policy.train(was_training)
            torch.set_num_threads(threads)
        seconds = time.perf_counter() - began
        self.checks += 1
        self.seconds += seconds
        return GreedyScore(total, len(max_xs), clears, float(np.mean(max_xs)), seconds)

    def _play(self, stage: int, noop: int) -> tuple[bool, int]:
        env = self._env(stage)
        obs, info = env.reset(options={"noop_frames": noop})
        life = int(info["life"])
        state, start = None, True
        max_x, since_best = 0, 0
        for _ in range(MAX_STEPS):
            with torch.inference_mode():
                batch = torch.from_numpy(np.asarray(obs)).unsqueeze(0).to(self.device)
                done = torch.tensor([float(start)], device=self.device)
                actions, _, _, state = self.policy.act(batch, state, done, deterministic=True)
            obs, _, terminated, truncated, info = env.step(int(actions[0]))
            start = False
            x = int(info["x_pos"])
            since_best = 0 if x > max_x else since_best + 1
            max_x = max(max_x, x)
            if info.get("flag_get"):
                return True, max_x
            if terminated or truncated or int(info["life"]) < life or since_best >= STALL_STEPS:
                return False, max_x
        return False, max_x

    def _env(self, stage: int) -> Any:
        from mario_cli.envs import make_env
        from mario_cli.training.repair import stage_env_config

        env = self._envs.get(stage)
        if env is None:
            env = make_env(stage_env_config(self.cfg, self.specs[stage]))
            self._envs[stage] = env
        return env

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
