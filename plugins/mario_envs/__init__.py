"""Built-in env wrappers, registered through the public ``register_wrappers`` hook.

Factories import the wrapper modules (cv2, gymnasium, the emulator) only when an
env is built, so commands that only read the config start fast.
"""

from __future__ import annotations

from typing import Any

from mario_cli.api import Register, WrapperFactory, hookimpl


def frame_skip(env: Any, cfg: Any) -> Any:
    from mario_envs.wrappers import FrameSkip

    return FrameSkip(env, cfg.frame_skip)


def grayscale(env: Any, cfg: Any) -> Any:
    from mario_envs.wrappers import GrayScale

    return GrayScale(env)


def resize(env: Any, cfg: Any) -> Any:
    from mario_envs.wrappers import Resize

    return Resize(env, cfg.obs_size, cfg.crop_top)


def reward(env: Any, cfg: Any) -> Any:
    from mario_envs.rewards import MarioReward

    return MarioReward(env, cfg)


def frame_stack(env: Any, cfg: Any) -> Any:
    from mario_envs.wrappers import FrameStack

    return FrameStack(env, cfg.frame_stack)


def frontier_restarts(env: Any, cfg: Any) -> Any:
    from mario_envs.restarts import FrontierRestarts

    return FrontierRestarts(env, cfg)


@hookimpl
def register_wrappers(register: Register[WrapperFactory]) -> None:
    register("frame_skip", frame_skip)
    register("grayscale", grayscale)
    register("resize", resize)
    register("reward", reward)
    register("frame_stack", frame_stack)
    register("restarts", frontier_restarts)
