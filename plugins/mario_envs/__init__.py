"""Built-in env wrappers, registered through the public ``register_wrappers`` hook."""

from __future__ import annotations

from typing import Any

from mario_cli.hookspecs import hookimpl
from mario_envs.rewards import MarioReward
from mario_envs.wrappers import FrameSkip, FrameStack, GrayScale, Resize


@hookimpl
def register_wrappers(register: Any) -> None:
    register("frame_skip", lambda env, cfg: FrameSkip(env, cfg.frame_skip))
    register("grayscale", lambda env, cfg: GrayScale(env))
    register("resize", lambda env, cfg: Resize(env, cfg.obs_size, cfg.crop_top))
    register("reward", lambda env, cfg: MarioReward(env, cfg))
    register("frame_stack", lambda env, cfg: FrameStack(env, cfg.frame_stack))
