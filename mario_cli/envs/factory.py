"""Build one env from the config: the core Mario env plus the registered wrappers."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from mario_cli.config import EnvConfig
from mario_cli.envs.core import MarioCore
from mario_cli.envs.stages import StageSpec, action_bytes, parse_env_id, stage_spec
from mario_cli.events import Episode


class EpisodeStats(gym.Wrapper):
    """Adds ``info["episode"]``, an :class:`~mario_cli.events.Episode`, at episode end;
    its ``restart`` marks an episode started from a saved state, its ``greedy`` a probe."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._return = 0.0
        self._length = 0
        self._restart = False
        self._greedy = False
        self._start_x = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._return = 0.0
        self._length = 0
        obs, info = self.env.reset(**kwargs)
        self._restart = bool(info.get("restart", False))
        self._greedy = bool(info.get("greedy", False))
        self._start_x = int(info.get("x_pos", 0))
        return obs, info

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += reward
        self._length += 1
        if terminated or truncated:
            info["episode"] = Episode(
                episode_return=float(self._return),
                length=self._length,
                max_x_pos=int(info["max_x_pos"]),
                cleared=bool(info["flag_get"]),
                stage=str(info["stage_name"]),
                restart=self._restart,
                start_x=self._start_x,
                greedy=self._greedy,
            )
        return obs, reward, terminated, truncated, info


def stage_specs(cfg: EnvConfig) -> list[StageSpec]:
    """The stage of ``env_id``, or the ``stages`` list when ``random_stage`` is on."""
    main = parse_env_id(cfg.env_id)
    if not cfg.random_stage:
        return [main]
    return [stage_spec(stage, main.lost_levels) for stage in cfg.stages]


def check_env_config(cfg: EnvConfig) -> None:
    """Raise the ConfigError make_env would, without starting an emulator (so a bad env
    id, stage, action set or wrapper name is reported here, not by a worker process)."""
    from mario_cli.plugins import get_host

    wrappers = get_host()["wrappers"]
    for name in cfg.wrappers:
        wrappers.get(name)
    stage_specs(cfg)
    action_bytes(cfg.movement)


def make_env(cfg: EnvConfig, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
    """The full pipeline for one env, reset once with ``seed`` if given."""
    from mario_cli.plugins import get_host

    wrappers = get_host()["wrappers"]
    factories = [wrappers.get(name) for name in cfg.wrappers]  # unknown names fail first
    env_reward = cfg.reward_mode in ("raw", "clip", "score")
    env: gym.Env = MarioCore(
        stage_specs(cfg), cfg.movement, env_reward, render_mode, jump_press=cfg.jump_press
    )
    for factory in factories:
        env = factory(env, cfg)
    env = EpisodeStats(env)
    if seed is not None:
        env.action_space.seed(seed)
    return env
