"""Observation and timing wrappers: frame skip, grayscale, resize, held-A marker, frame stack."""

from __future__ import annotations

from typing import Any

import cv2
import gymnasium as gym
import numpy as np

from mario_cli.api import MarioCore

# Env workers run one env loop per core; cv2's own thread pool only adds contention.
cv2.setNumThreads(1)


class FrameSkip(gym.Wrapper):
    """Repeat an action ``skip`` frames, sum the reward, max-pool the last two frames.

    Max-pooling removes the sprite flicker of the NES. The episode may end on any
    frame; the loop stops there. On the core Mario env, frames before the last two
    use the lean path (no observation, no info dict).
    """

    def __init__(self, env: gym.Env, skip: int) -> None:
        super().__init__(env)
        if skip < 1:
            raise ValueError("frame skip must be >= 1")
        self.skip = skip
        self._core = env if isinstance(env, MarioCore) else None

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        total = 0.0
        previous = None
        for i in range(self.skip):
            if self._core is not None and i < self.skip - 2:
                reward, done = self._core.skip_frame(action)
                total += reward
                if done:
                    obs, info = self._core.observe(), self._core.current_info()
                    return obs, total, True, False, info
                continue
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += reward
            if terminated or truncated:
                break
            if i == self.skip - 2:
                previous = obs
        else:
            if previous is not None:
                np.maximum(obs, previous, out=obs)
        return obs, total, terminated, truncated, info


class GrayScale(gym.ObservationWrapper):
    """Single-channel frames: native from the NES emulator when it is the core env."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        core = env.unwrapped
        self._native = isinstance(core, MarioCore)
        if self._native:
            core.use_grayscale()
        height, width = env.observation_space.shape[:2]
        self.observation_space = gym.spaces.Box(0, 255, (height, width), dtype=np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        if self._native or observation.ndim == 2:
            return observation
        return cv2.cvtColor(observation, cv2.COLOR_RGB2GRAY)


class Resize(gym.ObservationWrapper):
    """Crop ``crop_top`` rows (the HUD), then resize to ``size`` x ``size`` with INTER_AREA."""

    def __init__(self, env: gym.Env, size: int, crop_top: int = 0) -> None:
        super().__init__(env)
        self.size = size
        self.crop_top = crop_top
        channels = env.observation_space.shape[2:]
        self.observation_space = gym.spaces.Box(0, 255, (size, size, *channels), dtype=np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        frame = observation[self.crop_top :]
        return cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)


class HeldAMarker(gym.ObservationWrapper):
    """Paint the top-left corner of each frame white while A is held, black otherwise.

    Without jump press, whether ``right+A+B`` jumps depends on whether A was already
    held, which the screen does not show; the marker puts that one bit in the frames
    (the corner is the HUD's empty sky on every stage), so the env is Markov again.
    """

    def __init__(self, env: gym.Env, size: int) -> None:
        super().__init__(env)
        core = env.unwrapped
        if not isinstance(core, MarioCore):
            raise ValueError("held_a_marker needs the core Mario env underneath")
        if len(env.observation_space.shape) != 2:
            raise ValueError(
                "held_a_marker needs single-channel frames; put it after resize, before frame_stack"
            )
        self._core = core
        self.size = size

    def observation(self, observation: np.ndarray) -> np.ndarray:
        observation[: self.size, : self.size] = 255 if self._core.a_held else 0
        return observation


class FrameStack(gym.Wrapper):
    """Stack the last ``k`` frames on a leading axis: ``(k, H, W)``, oldest first."""

    def __init__(self, env: gym.Env, k: int) -> None:
        super().__init__(env)
        frame_shape = env.observation_space.shape
        if len(frame_shape) != 2:
            raise ValueError("frame_stack needs single-channel frames; put grayscale before it")
        self.k = k
        self._frames = np.zeros((k, *frame_shape), dtype=np.uint8)
        self.observation_space = gym.spaces.Box(0, 255, (k, *frame_shape), dtype=np.uint8)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._frames[:] = obs
        return self._frames.copy(), info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._frames[:-1] = self._frames[1:]
        self._frames[-1] = obs
        return self._frames.copy(), reward, terminated, truncated, info


# Factories ``(env, cfg: EnvConfig) -> env`` registered under the wrapper names.
def frame_skip(env: gym.Env, cfg: Any) -> gym.Env:
    return FrameSkip(env, cfg.frame_skip)


def grayscale(env: gym.Env, cfg: Any) -> gym.Env:
    return GrayScale(env)


def resize(env: gym.Env, cfg: Any) -> gym.Env:
    return Resize(env, cfg.obs_size, cfg.crop_top)


def held_a_marker(env: gym.Env, cfg: Any) -> gym.Env:
    # 6 px of 84: a quarter of the HUD's height, left of the score.
    return HeldAMarker(env, max(2, cfg.obs_size // 14))


def frame_stack(env: gym.Env, cfg: Any) -> gym.Env:
    return FrameStack(env, cfg.frame_stack)
