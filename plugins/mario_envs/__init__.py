"""Built-in env wrappers, registered through the public ``register_wrappers`` hook.

Factories import the wrapper modules (cv2, gymnasium, the emulator) only when an
env is built, so commands that only read the config start fast.
"""

from __future__ import annotations

from mario_cli.api import Register, WrapperFactory, hookimpl
from mario_envs.settings import RestartsSettings, RewardSettings


@hookimpl
def register_wrappers(register: Register[WrapperFactory]) -> None:
    register("frame_skip", "mario_envs.wrappers:frame_skip")
    register("grayscale", "mario_envs.wrappers:grayscale")
    register("resize", "mario_envs.wrappers:resize")
    register("held_a_marker", "mario_envs.wrappers:held_a_marker")
    register("reward", "mario_envs.rewards:MarioReward", settings=RewardSettings)
    register("frame_stack", "mario_envs.wrappers:frame_stack")
    register("restarts", "mario_envs.restarts:FrontierRestarts", settings=RestartsSettings)
