"""Greedy-path repair: where greedy play from the stage start dies, find the one-step
change that gets past, and imitate the repaired path.

Why: ``mario eval`` plays the policy's argmax, and argmax from the stage start is one
fixed path (the NES is deterministic). Measured on 1-1, every variant's greedy path
died at the same pit while sampled play cleared a share of its episodes: the decisive
steps sit 15-30 steps before the pit, where holding A is right nearly everywhere, so
the policy gradient on sampled play never moves the argmax there. The learner can see
the path itself: every ``repair_every`` agent steps it plays greedily from the stage
start (eval's start protocol: 0..30 no-op frames), and if the path dies it tries, from
the last step backwards, each other action for one step followed by greedy play again
(:func:`mario_cli.deviations.first_repair`). The repaired path (the path's own steps,
the change, and greedy play until past the old death) is then imitated for
``repair_steps`` cross-entropy steps after every update; a path that clears is imitated
as it is, so what is learned is kept. Per stage and no-op start, one repaired path (the
newest ``repair_paths`` of them) and one cleared path (the newest ``repair_cleared``):
a clear replaces that start's repaired path, and a later death from a start that once
cleared keeps the clear next to its repair, so a way through is not forgotten when a
newer check of another start comes. They are not saved in checkpoints: a resumed run
finds them again at its next check. While the checks' paths clear, every
``CLEARS_PER_DOUBLING`` clears in a row double the interval (up to ``repair_backoff``
times ``repair_every``): on 1-1 every check found a clear after the first minutes and
the checks took 9% of an hour.

This is a training aid, like restarts: the checks play the learner's stage as eval
plays it (restarts and the no-progress cut off, :func:`stage_env_config`), never
enter ``rollout/*``, ``best.pt`` or eval, and are reported as ``repair/*``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mario_cli import metric_names as names
from mario_cli.config import MarioConfig
from mario_cli.deviations import (
    GreedyPath,
    RepairSearch,
    first_repair,
    path_to_search,
    replay_from_start,
)
from mario_cli.envs.stages import StageSpec, action_names, jump_factors
from mario_cli.errors import ConfigError
from mario_cli.eval_protocol import DEFAULT_NOOP_MAX, without_training_aids

MAX_PATH_STEPS = 2500  # a 400-second stage at frame skip 4 is ~2,400 steps
SEARCH_STEPS = 12_000  # env steps one search may take (a few seconds; typical: ~3,000)
# Clears in a row per doubling of the check interval. A stage whose greedy play clears
# from 3 of 4 starts still needs its checks: its next 4 checks all clear with
# probability 32% and its next 12 (8x) 3%; doubling at every clear got to 8x after
# 3 clears (42%).
CLEARS_PER_DOUBLING = 4


@dataclass
class RepairedPath:
    """What is imitated for one start: observations, the actions to take, the fix."""

    observations: np.ndarray  # (T, *obs_shape) uint8
    actions: np.ndarray  # (T,) int64
    fixes: list[int]  # the indices of the changed steps; none for a path that cleared


def candidate_actions(movement: str, which: str) -> list[int]:
    """The changes a repair tries: every action without A ("release"), or all."""
    if which == "all":
        return list(range(len(action_names(movement))))
    _, holds_a = jump_factors(movement)
    return [i for i, held in enumerate(holds_a) if not held]


def stage_env_config(cfg: MarioConfig, spec: StageSpec) -> Any:
    """The run's env settings for one stage as eval plays it: from its start, no
    sampling of stages, none of training's aids (restarts, the no-progress cut)."""
    data = cfg.to_dict()
    env = without_training_aids(data["env"])
    env["env_id"] = spec.env_id
    env["random_stage"] = False
    return MarioConfig.model_validate({**data, "env": env}).env


def _put_newest(
    paths: OrderedDict[tuple[str, int], RepairedPath],
    key: tuple[str, int],
    path: RepairedPath,
    limit: int,
) -> None:
    paths.pop(key, None)
    paths[key] = path
    while len(paths) > limit:
        paths.popitem(last=False)


class PathRepair:
    """The learner's greedy checks and the imitation of what they repaired."""

    def __init__(
        self,
        cfg: MarioConfig,
        policy: torch.nn.Module,
        optimiser: Any,
        device: torch.device,
        search_threads: int | None = None,
    ) -> None:
        from mario_cli.envs.factory import stage_specs

        if policy.recurrent:
            raise ConfigError(
                "--repair-every needs a feed-forward policy (greedy paths are replayed "
                "step by step); use --recurrent none or --repair-every 0"
            )
        self.cfg = cfg
        self.settings = cfg.repair
        self.policy = policy
        self.optimiser = optimiser
        self.device = device
        self.specs = stage_specs(cfg.env)
        self.candidates = candidate_actions(cfg.env.movement, self.settings.repair_actions)
        self.action_names = action_names(cfg.env.movement)
        self.repaired: OrderedDict[tuple[str, int], RepairedPath] = OrderedDict()
        self.cleared: OrderedDict[tuple[str, int], RepairedPath] = OrderedDict()
        self.checks = self.clears = self.fixes = 0
        self.seconds = 0.0
        self.next_check: int | None = None
        self.clears_in_a_row = 0
        self._envs: dict[str, Any] = {}
        # The env workers are idle during a check (synchronous training): the search's
        # trials play in one thread per core, each on its own env (the first: the check's),
        # and no more threads than a step has changes to try.
        threads = search_threads or os.cpu_count() or 1
        self.search_threads = max(1, min(threads, len(self.candidates)))
        self._search_envs: dict[str, list[Any]] = {}
        self._rng = np.random.default_rng([cfg.train.seed, 0x9E9A])  # reseeded at the first update
        self._batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._last: dict[str, float] = {}

    # ----------------------------------------------------------------- checks
    def after_update(self, global_step: int) -> tuple[dict[str, float], list[str]]:
        """Check greedy play when due, then imitate; returns (metrics, notices)."""
        every = self.settings.repair_every
        if self.next_check is None:  # the first check: at the first multiple of every
            self.next_check = -(-global_step // every) * every
            # a resumed run draws other starts than the run's own first checks did
            self._rng = np.random.default_rng([self.cfg.train.seed, 0x9E9A, global_step])
        notices = []
        if global_step >= self.next_check:
            message, cleared = self.check()
            # Once greedy play clears, a check mostly finds what is kept already: back
            # off, and come back to the base interval at the first start that fails.
            self.clears_in_a_row = self.clears_in_a_row + 1 if cleared else 0
            backoff = self.backoff
            self.next_check = (global_step // every + backoff) * every
            self._last[names.REPAIR_INTERVAL] = float(backoff * every)
            if backoff > 1:
                message += (
                    f"; {self.clears_in_a_row} clears in a row: next check in "
                    f"{self.next_check - global_step:,} steps"
                )
            notices.append(message)
        return self._last | self.imitate(), notices

    @property
    def backoff(self) -> int:
        """The interval to the next check, in multiples of ``repair_every``."""
        doublings = self.clears_in_a_row // CLEARS_PER_DOUBLING
        return min(2**doublings, self.settings.repair_backoff)

    def check(self) -> tuple[str, bool]:
        """Play greedily from one drawn start; keep its path (cleared or repaired).
        Returns the check's line and whether the path cleared."""
        began = time.perf_counter()
        spec = self.specs[int(self._rng.integers(len(self.specs)))]
        noop = int(self._rng.integers(0, DEFAULT_NOOP_MAX + 1))
        env = self._env(spec)
        window = self.settings.repair_window
        threads = torch.get_num_threads()
        was_training = self.policy.training
        torch.set_num_threads(1)  # batch-1 inference: a second thread only waits
        self.policy.eval()  # as eval plays it (noisy heads off)
        try:
            choose = self._chooser()
            path, searched = path_to_search(env, choose, noop, window, MAX_PATH_STEPS)
            search, verified = None, None
            if not path.cleared:
                search = first_repair(
                    env,
                    choose,
                    searched,
                    window,
                    self.candidates,
                    self.settings.repair_margin,
                    max_env_steps=SEARCH_STEPS,
                    lengths=self.settings.repair_lengths,
                    more_envs=self._more_envs(spec),
                )
                if search.repair is not None:
                    verified = self._verify(env, noop, search, path.max_x)
        finally:
            self.policy.train(was_training)
            torch.set_num_threads(threads)
        self.checks += 1
        self.seconds += time.perf_counter() - began
        self._last = {
            names.REPAIR_CHECKS: float(self.checks),
            names.REPAIR_SECONDS: self.seconds,
            names.REPAIR_MAX_X_POS: float(path.max_x),
        }
        start = f"greedy from {spec.label} after {noop} no-op frames"
        key = (spec.label, noop)
        if path.cleared:
            self.clears += 1
            self._keep(key, path.observations, path.actions, [])
            message = f"repair: {start} cleared ({len(path.actions)} steps); imitating it"
        elif search is not None and search.repair is not None and verified is not None:
            self.fixes += 1
            repair = search.repair
            fix = repair.deviation
            self._last[names.REPAIR_FIX_X_POS] = float(fix.x)
            self._keep(key, verified, repair.actions, repair.fix_indices)
            reached = "the flag" if fix.cleared else f"x {fix.max_x:,}"
            ended = "died" if path.died else "got stuck"
            held = f" held {fix.length} steps" if fix.length > 1 else ""
            message = (
                f"repair: {start} {ended} at x {path.max_x:,}; {self.action_names[fix.action]}"
                f"{held} at step {fix.step} (x {fix.x:,}) reaches {reached}: imitating that path"
            )
        else:
            message = f"repair: {start} {self._no_repair(path, window, search)}"
        self._last[names.REPAIR_CLEARS] = float(self.clears)
        self._last[names.REPAIR_FIXES] = float(self.fixes)
        return message, path.cleared

    def _verify(
        self, env: Any, noop: int, search: RepairSearch, died_at: int
    ) -> list[np.ndarray] | None:
        """The repaired path's observations played from the stage start, or None if it
        does not get past there (a restore does not hold the jump-press memory)."""
        repair = search.repair
        replay = replay_from_start(env, noop, repair.actions)
        target = died_at + self.settings.repair_margin
        holds = len(replay.actions) == len(repair.actions) and (
            replay.cleared or replay.max_x >= target
        )
        return replay.observations if holds else None

    def _no_repair(self, path: GreedyPath, window: int, search: RepairSearch | None) -> str:
        ended = "died" if path.died else "stopped without dying (stuck)"
        where = f"{ended} at x {path.max_x:,}"
        if search is None:
            return where
        if search.repair is not None:
            return f"{where}; the change found did not get past when replayed from the start"
        if search.out_of_budget:
            return f"{where}; no change found within {SEARCH_STEPS:,} env steps of search"
        lengths = self.settings.repair_lengths
        change = (
            "one-step change"
            if list(lengths) == [1]
            else "change held " + "/".join(str(n) for n in lengths) + " steps"
        )
        return f"{where}; no {change} in the {window} steps before it gets past"

    def _chooser(self) -> Callable[[np.ndarray], int]:
        def choose(obs: np.ndarray) -> int:
            with torch.inference_mode():
                batch = torch.from_numpy(np.asarray(obs)).unsqueeze(0).to(self.device)
                return int(self.policy(batch).logits.argmax(dim=-1)[0])

        return choose

    def _more_envs(self, spec: StageSpec) -> list[Any]:
        """Envs of ``spec``'s stage besides the check's own, one per extra search thread."""
        from mario_cli.envs import make_env

        envs = self._search_envs.setdefault(spec.label, [])
        while len(envs) < self.search_threads - 1:
            envs.append(make_env(stage_env_config(self.cfg, spec)))
        return envs

    def _env(self, spec: StageSpec) -> Any:
        from mario_cli.envs import make_env

        env = self._envs.get(spec.label)
        if env is None:
            env = make_env(stage_env_config(self.cfg, spec))
            self._envs[spec.label] = env
        return env

    def _keep(
        self,
        key: tuple[str, int],
        observations: list[np.ndarray],
        actions: list[int],
        fixes: list[int],
    ) -> None:
        """Keep a start's path: one with fixes is a repair, one without a clear."""
        path = RepairedPath(np.stack(observations), np.asarray(actions, dtype=np.int64), fixes)
        if fixes:
            _put_newest(self.repaired, key, path, self.settings.repair_paths)
        else:  # greedy play clears from this start now: its repair is out of date
            self.repaired.pop(key, None)
            _put_newest(self.cleared, key, path, self.settings.repair_cleared)
        self._batch = None

    def keep_clears(self, cleared: list[Any]) -> None:
        """Keep the clears another greedy check played (the best.pt check's
        :class:`~mario_cli.training.best_check.ClearedPath`), as this check's own."""
        for path in cleared:
            self._keep((path.stage, path.noop), path.observations, path.actions, [])

    @property
    def paths(self) -> list[RepairedPath]:
        """Every kept path, cleared ones first."""
        return [*self.cleared.values(), *self.repaired.values()]

    # -------------------------------------------------------------- imitation
    def _demos(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every kept path's steps on the device, and the indices of the fixes."""
        if self._batch is None:
            paths = self.paths
            obs = torch.from_numpy(np.concatenate([p.observations for p in paths]))
            actions = torch.from_numpy(np.concatenate([p.actions for p in paths]))
            fixes, offset = [], 0
            for path in paths:
                fixes.extend(offset + index for index in path.fixes)
                offset += len(path.actions)
            self._batch = (
                obs.to(self.device),
                actions.to(self.device),
                torch.tensor(fixes, dtype=torch.long, device=self.device),
            )
        return self._batch

    def imitate(self) -> dict[str, float]:
        """``repair_steps`` cross-entropy steps on the kept paths.

        Each batch holds every fix and ``repair_batch`` steps drawn from all the paths;
        the fixes' mean loss weighs as much as the drawn steps' (one step in a hundred
        would otherwise barely move, and the policy gradient pushes it back each update).
        """
        steps = self.settings.repair_steps
        if not self.paths or steps == 0 or self.settings.repair_coef == 0:
            return {}
        obs, actions, fixes = self._demos()
        self.optimiser.flush()  # the update's leftover gradients are not imitation's
        was_training = self.policy.training
        self.policy.eval()  # the logits greedy play uses (noisy heads off); grads still flow
        try:
            losses, accuracy, fix_accuracy = self._imitation_steps(obs, actions, fixes, steps)
        finally:
            self.policy.train(was_training)
        metrics = {
            names.REPAIR_PATHS: float(len(self.paths)),
            names.REPAIR_CLEARED_PATHS: float(len(self.cleared)),
            names.REPAIR_DEMO_STEPS: float(len(actions)),
            names.REPAIR_ACCURACY: accuracy,
            names.REPAIR_IMITATION_LOSS: float(np.mean(losses)),
        }
        if fix_accuracy is not None:
            metrics[names.REPAIR_FIX_ACCURACY] = fix_accuracy
        return metrics

    def _imitation_steps(
        self, obs: torch.Tensor, actions: torch.Tensor, fixes: torch.Tensor, steps: int
    ) -> tuple[list[float], float, float | None]:
        n, n_fixes = len(actions), len(fixes)
        losses: list[float] = []
        accuracy, fix_accuracy = 0.0, None
        for k in range(steps):
            drawn = torch.from_numpy(self._rng.integers(0, n, self.settings.repair_batch))
            index = torch.cat([fixes, drawn.to(self.device)])
            with self.optimiser.autocast():
                logits = self.policy(obs[index]).logits
            each = F.cross_entropy(logits.float(), actions[index], reduction="none")
            loss = each[n_fixes:].mean()
            if n_fixes:
                loss = loss + each[:n_fixes].mean()
            if k == 0:  # before this update's imitation: what the policy already does
                hits = (logits.argmax(dim=-1) == actions[index]).float()
                accuracy = float(hits[n_fixes:].mean())
                if n_fixes:
                    fix_accuracy = float(hits[:n_fixes].mean())
            self.optimiser.accumulate(self.settings.repair_coef * loss)
            self.optimiser.step()
            losses.append(float(loss.detach()))
        return losses, accuracy, fix_accuracy

    def close(self) -> None:
        for env in [*self._envs.values(), *itertools.chain(*self._search_envs.values())]:
            env.close()
        self._envs.clear()
        self._search_envs.clear()
