"""Reward modes: raw, clip, progress and score; and the no-progress episode cut."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class MarioReward(gym.Wrapper):
    """Replace the env reward according to ``env.reward_mode``, with the ``[env.reward]``
    settings:

    - ``raw``: the env's own reward; ``clip``: its sign.
    - ``progress``: ``progress_scale`` per pixel of new best x (left/right farming
      earns nothing), ``flag_bonus`` at the flag, ``death_penalty`` on a lost life,
      ``stall_penalty`` per step once x has not improved for ``stall_steps``, an
      optional ``backward_penalty_scale`` per pixel moved left and
      ``milestone_bonus`` every ``milestone_every`` pixels of new best x.
    - ``score``: ``score_scale`` x (env reward + score delta / ``score_divisor``),
      plus the flag bonus and minus the death penalty.

    In every mode an episode with no new best x for ``no_progress_cut_steps`` steps is
    truncated (the value is bootstrapped); progress mode also subtracts
    ``no_progress_cut_penalty`` then. Each step's info gets ``reward_terms``.
    """

    def __init__(self, env: gym.Env, cfg: Any) -> None:
        super().__init__(env)
        self.settings = cfg.settings_of("reward")
        self.mode = cfg.reward_mode
        self._best_x = 0
        self._last_x = 0
        self._last_score = 0
        self._last_life = 0
        self._since_best = 0
        self._milestones = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._best_x = self._last_x = info["x_pos"]
        self._last_score = info["score"]
        self._last_life = info["life"]
        self._since_best = 0
        self._milestones = self._best_x // self.settings.milestone_every
        return obs, info

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, env_reward, terminated, truncated, info = self.env.step(action)
        own = self.settings
        x = info["x_pos"]
        flag = info["flag_get"]
        died = (terminated and not flag) or info["life"] < self._last_life
        gain = max(0, x - self._best_x)
        if gain:
            self._best_x = x
            self._since_best = 0
        else:
            self._since_best += 1
        cut = (
            own.no_progress_cut_steps > 0
            and self._since_best >= own.no_progress_cut_steps
            and not (terminated or truncated)
        )

        terms: dict[str, float] = {}
        if self.mode == "raw":
            terms["env"] = env_reward
        elif self.mode == "clip":
            terms["env"] = float(np.sign(env_reward))
        elif self.mode == "progress":
            terms["progress"] = own.progress_scale * gain
            terms["backward"] = -own.backward_penalty_scale * max(0, self._last_x - x)
            milestones = self._best_x // own.milestone_every
            terms["milestone"] = own.milestone_bonus * max(0, milestones - self._milestones)
            self._milestones = max(self._milestones, milestones)
            stalled = self._since_best >= own.stall_steps
            terms["stall"] = -own.stall_penalty if stalled else 0.0
            terms["flag"] = own.flag_bonus if flag else 0.0
            terms["death"] = -own.death_penalty if died else 0.0
            terms["no_progress"] = -own.no_progress_cut_penalty if cut else 0.0
        else:  # score
            score_gain = max(0, info["score"] - self._last_score)
            terms["env"] = own.score_scale * (env_reward + score_gain / own.score_divisor)
            terms["flag"] = own.flag_bonus if flag else 0.0
            terms["death"] = -own.death_penalty if died else 0.0

        self._last_x = x
        self._last_score = info["score"]
        self._last_life = info["life"]
        info["reward_terms"] = terms
        info["died"] = died
        return obs, float(sum(terms.values())), terminated, truncated or cut, info
