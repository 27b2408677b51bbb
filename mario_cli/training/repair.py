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
as it is, so what is learned is kept. One path is kept per stage and no-op start (the
newest ``repair_paths``); they are not saved in checkpoints: a resumed run finds them
again at its next check.

This is a training aid, like restarts: the checks run in the learner's own env, never
enter ``rollout/*``, ``best.pt`` or eval, and are reported as ``repair/*``.
"""

from __future__ import annotations

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
from mario_cli.deviations import REPLAY_STEPS, GreedyPath, first_repair, greedy_path
from mario_cli.envs.stages import StageSpec, action_names, jump_factors
from mario_cli.errors import ConfigError
from mario_cli.eval_protocol import DEFAULT_NOOP_MAX

MAX_PATH_STEPS = 2500  # a 400-second stage at frame skip 4 is ~2,400 steps
STALL_STEPS = 150  # a path this long without a new max x is stuck, not dying
STALL_TAIL = 8  # a stuck path is searched up to this many steps after its max x


@dataclass
class RepairedPath:
    """What is imitated for one start: observations, the actions to take, the fix."""

    observations: np.ndarray  # (T, *obs_shape) uint8
    actions: np.ndarray  # (T,) int64
    fix: int | None  # the index of the changed step; None for a path that cleared


def candidate_actions(movement: str, which: str) -> list[int]:
    """The changes a repair tries: every action without A ("release"), or all."""
    if which == "all":
        return list(range(len(action_names(movement))))
    _, holds_a = jump_factors(movement)
    return [i for i, held in enumerate(holds_a) if not held]


def stage_env_config(cfg: MarioConfig, spec: StageSpec) -> Any:
    """The run's env settings for one stage from its start: no restarts, no sampling."""
    data = cfg.to_dict()
    env = dict(data["env"])
    env["env_id"] = spec.env_id
    env["random_stage"] = False
    env["restarts"] = {**env.get("restarts", {}), "share": 0.0}
    return MarioConfig.model_validate({**data, "env": env}).env


class PathRepair:
    """The learner's greedy checks and the imitation of what they repaired."""

    def __init__(
        self, cfg: MarioConfig, policy: torch.nn.Module, optimiser: Any, device: torch.device
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
        self.paths: OrderedDict[tuple[str, int], RepairedPath] = OrderedDict()
        self.checks = self.clears = self.fixes = 0
        self.seconds = 0.0
        self.next_check: int | None = None
        self._envs: dict[str, Any] = {}
        self._rng = np.random.default_rng([cfg.train.seed, 0x9E9A])
        self._batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._last: dict[str, float] = {}

    # ----------------------------------------------------------------- checks
    def after_update(self, global_step: int) -> tuple[dict[str, float], list[str]]:
        """Check greedy play when due, then imitate; returns (metrics, notices)."""
        every = self.settings.repair_every
        if self.next_check is None:  # the first check: at the first multiple of every
            self.next_check = -(-global_step // every) * every
        notices = []
        if global_step >= self.next_check:
            self.next_check = (global_step // every + 1) * every
            notices.append(self.check())
        return self._last | self.imitate(), notices

    def check(self) -> str:
        """Play greedily from one drawn start; keep its path (cleared or repaired)."""
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
            path = greedy_path(
                env,
                choose,
                noop,
                MAX_PATH_STEPS,
                keep_states=STALL_STEPS + window + REPLAY_STEPS + 1,
                stall_steps=STALL_STEPS,
            )
            repair = None
            if not path.cleared:
                searched = path if path.died else path.stall_point(STALL_TAIL)
                repair, _ = first_repair(
                    env, choose, searched, window, self.candidates, self.settings.repair_margin
                )
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
            self._keep(key, path.observations, path.actions, None)
            message = f"repair: {start} cleared ({len(path.actions)} steps); imitating it"
        elif repair is not None:
            self.fixes += 1
            fix = repair.deviation
            self._last[names.REPAIR_FIX_X_POS] = float(fix.x)
            self._keep(key, repair.observations, repair.actions, repair.fix_index)
            reached = "the flag" if fix.cleared else f"x {fix.max_x:,}"
            ended = "died" if path.died else "stalled"
            message = (
                f"repair: {start} {ended} at x {path.max_x:,}; {self.action_names[fix.action]} "
                f"at step {fix.step} (x {fix.x:,}) reaches {reached}: imitating that path"
            )
        else:
            message = f"repair: {start} {self._no_repair(path, window)}"
        self._last[names.REPAIR_CLEARS] = float(self.clears)
        self._last[names.REPAIR_FIXES] = float(self.fixes)
        return message

    @staticmethod
    def _no_repair(path: GreedyPath, window: int) -> str:
        if path.died:
            return (
                f"died at x {path.max_x:,}; no one-step change in its last {window} steps gets past"
            )
        return (
            f"stalled at x {path.max_x:,} (no new x for {STALL_STEPS} steps); no one-step "
            f"change in the {window} steps before it gets past"
        )

    def _chooser(self) -> Callable[[np.ndarray], int]:
        def choose(obs: np.ndarray) -> int:
            with torch.inference_mode():
                batch = torch.from_numpy(np.asarray(obs)).unsqueeze(0).to(self.device)
                return int(self.policy(batch).logits.argmax(dim=-1)[0])

        return choose

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
        fix: int | None,
    ) -> None:
        self.paths.pop(key, None)
        self.paths[key] = RepairedPath(
            np.stack(observations), np.asarray(actions, dtype=np.int64), fix
        )
        while len(self.paths) > self.settings.repair_paths:
            self.paths.popitem(last=False)
        self._batch = None

    # -------------------------------------------------------------- imitation
    def _demos(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every kept path's steps on the device, and the indices of the fixes."""
        if self._batch is None:
            paths = list(self.paths.values())
            obs = torch.from_numpy(np.concatenate([p.observations for p in paths]))
            actions = torch.from_numpy(np.concatenate([p.actions for p in paths]))
            fixes, offset = [], 0
            for path in paths:
                if path.fix is not None:
                    fixes.append(offset + path.fix)
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
        n, n_fixes = len(actions), len(fixes)
        losses, accuracy, fix_accuracy = [], 0.0, None
        self.optimiser.flush()  # the update's leftover gradients are not imitation's
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
        metrics = {
            names.REPAIR_PATHS: float(len(self.paths)),
            names.REPAIR_DEMO_STEPS: float(n),
            names.REPAIR_ACCURACY: accuracy,
            names.REPAIR_IMITATION_LOSS: float(np.mean(losses)),
        }
        if fix_accuracy is not None:
            metrics[names.REPAIR_FIX_ACCURACY] = fix_accuracy
        return metrics

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
