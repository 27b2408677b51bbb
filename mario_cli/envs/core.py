"""The core Mario env: one NES emulator (or one per stage), discrete actions, small info.

The emulator costs ~1.3 ms per frame here; gym-super-mario-bros builds a ~40-key
info dict and a reward on every frame. Frame skip only needs those on the frame it
returns, so ``skip_frame`` advances a frame with just the bookkeeping the game
logic needs (death and cut-scene skipping, termination).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gym_super_mario_bros import SuperMarioBrosEnv
from nes_py.nes_env import SCREEN_HEIGHT, SCREEN_WIDTH

from mario_cli.envs.stages import BUTTON_BITS, StageSpec, action_bytes

REWARD_LIMIT = 15.0  # gym-super-mario-bros clips each frame's reward to +-15.
NOOP_ACTION = 0  # "NOOP" comes first in every gym-super-mario-bros action set.
A_BUTTON = BUTTON_BITS["A"]
FLOAT_STATE = 0x001D  # Mario's float state in RAM: 0 on the ground, 1-3 in the air / climbing.
SAVED_JOYPAD = 0x06FC  # The last controller byte the game read, bit-reversed: A is 0x80 here.


@dataclass(frozen=True, eq=False)
class SavedState:
    """A whole-emulator snapshot and its stage, from ``MarioCore.dump_state()``.

    The snapshot is an opaque native object: it cannot be pickled, so it never leaves
    the process (the env worker) that made it. ``reset(options={"restore": state})``
    starts an episode from it.
    """

    spec: StageSpec
    snapshot: Any


class MarioCore(gym.Env):
    """A stage (or a random stage per episode) of Super Mario Bros as a Gymnasium env.

    Observations are RGB ``(240, 256, 3)`` uint8, or grayscale ``(240, 256)`` after
    ``use_grayscale()`` (nes-py converts natively, cheaper than cv2 on RGB).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 60}

    def __init__(
        self,
        specs: list[StageSpec],
        movement: str = "simple",
        env_reward: bool = True,
        render_mode: str | None = None,
        jump_press: bool = False,
    ) -> None:
        if not specs:
            raise ValueError("MarioCore needs at least one stage")
        self.specs = specs
        self.movement = movement
        self.env_reward = env_reward
        self.render_mode = render_mode
        self._buttons = action_bytes(movement)
        self.action_space = gym.spaces.Discrete(len(self._buttons))
        self.grayscale = False
        self.observation_space = gym.spaces.Box(
            0, 255, (SCREEN_HEIGHT, SCREEN_WIDTH, 3), dtype=np.uint8
        )
        self._envs: dict[StageSpec, SuperMarioBrosEnv] = {}
        self._spec = specs[0]
        self._nes = self._emulator(self._spec)
        self._max_x = 0
        # Press semantics for A (see ``_buttons_for``): RAM as a memoryview, whose
        # items are plain ints (no numpy scalar per frame).
        self.jump_press = jump_press
        self._ram = memoryview(self._nes.ram)
        self._reset_controls()
        # Called with the RGB screen (a live view: copy to keep it) after every NES
        # frame, so videos and live windows show all frames, not one per agent step.
        self.on_frame: Callable[[np.ndarray], None] | None = None
        self._lean = all(
            hasattr(self._nes, name)
            for name in ("_get_reward", "_get_terminated", "_did_step", "_env")
        )

    def use_grayscale(self) -> None:
        """Emit grayscale frames straight from the emulator."""
        self.grayscale = True
        self.observation_space = gym.spaces.Box(
            0, 255, (SCREEN_HEIGHT, SCREEN_WIDTH), dtype=np.uint8
        )

    def _emulator(self, spec: StageSpec) -> SuperMarioBrosEnv:
        # Emulators are created lazily: a random-stage env builds only the stages it visits.
        if spec not in self._envs:
            self._envs[spec] = SuperMarioBrosEnv(lost_levels=spec.lost_levels, target=spec.target)
        return self._envs[spec]

    @property
    def stage(self) -> str:
        return self._spec.label

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if len(self.specs) > 1:
            self._spec = self.specs[int(self.np_random.integers(len(self.specs)))]
            self._nes = self._emulator(self._spec)
            self._ram = memoryview(self._nes.ram)
        restore: SavedState | None = (options or {}).get("restore")
        if restore is not None:  # a frontier restart: the saved state's own stage
            self._select(restore.spec)
        self._nes.reset()
        if restore is not None:
            self._load_state(restore)
        self._reset_controls()
        # Evaluation's start protocol: wait a few frames so that episodes differ.
        for _ in range(int((options or {}).get("noop_frames", 0))):
            self.skip_frame(NOOP_ACTION)
        self._max_x = 0
        info = self.current_info()
        info["restart"] = restore is not None
        return self.observe(), info

    def dump_state(self) -> SavedState:
        """The whole emulator state now (~0.04 ms, ~256 KB), for ``reset(options=...)``."""
        return SavedState(self._spec, self._nes.dump_state())

    def _select(self, spec: StageSpec) -> None:
        self._spec = spec
        self._nes = self._emulator(spec)
        self._ram = memoryview(self._nes.ram)

    def _load_state(self, saved: SavedState) -> None:
        self._nes.load_state(saved.snapshot)
        # gym-super-mario-bros keeps its reward bookkeeping (best x, last time, score,
        # coins, power-up) in Python, stale after a restore: resync it from the
        # restored RAM, as its own reset does. Wrappers above re-initialise from the
        # reset's info and observation; _reset_controls resyncs the jump-press memory.
        self._nes._did_reset()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One NES frame through the env's public step (full reward and info)."""
        _, reward, terminated, truncated, nes_info = self._nes.step(self._buttons_for(action))
        if self.on_frame is not None:
            self.on_frame(self._nes.screen)
        info = self._small_info(nes_info)
        return self.observe(), float(reward), terminated, truncated, info

    def skip_frame(self, action: int) -> tuple[float, bool]:
        """Advance one frame without building the observation or the info dict.

        Returns the frame's env reward (0.0 when ``env_reward`` is off) and whether
        the episode ended.
        """
        if not self._lean:
            _, reward, terminated, truncated, _ = self._nes.step(self._buttons_for(action))
            if self.on_frame is not None:
                self.on_frame(self._nes.screen)
            return float(reward), terminated or truncated
        nes = self._nes
        nes._env.frame_advance(self._buttons_for(action))
        if self.on_frame is not None:
            self.on_frame(nes.screen)
        reward = nes._get_reward() if self.env_reward else 0.0
        done = bool(nes._get_terminated())
        nes.done = done
        nes._did_step(done)
        return float(np.clip(reward, -REWARD_LIMIT, REWARD_LIMIT)), done

    def _reset_controls(self) -> None:
        """Resync the jump-press memory: call after a reset or an emulator state restore.

        Whether A is held comes from the game's own last controller read (released
        after a reset); armed, so that a restored Mario standing with A held gets
        his one release.
        """
        self._a_held = bool(self._ram[SAVED_JOYPAD] & 0x80)
        self._jump_armed = True

    def _buttons_for(self, action: int) -> int:
        """The controller byte for this frame, with the held A released once per landing.

        nes-py holds the byte across frames and the NES starts a jump only when A
        goes from released to pressed, so a held A on the ground never jumps again.
        With ``jump_press``, when Mario is on the ground, A was held on the previous
        frame and the action holds A, A is released for this one frame; then no
        release until Mario has been in the air again. Not per frame: on the frame
        of take-off the float state still reads "on the ground", and releasing
        there again would cut every jump to a hop.
        """
        buttons = self._buttons[action]
        if self.jump_press:
            if self._ram[FLOAT_STATE]:  # airborne (or climbing): the next landing may release
                self._jump_armed = True
            elif buttons & A_BUTTON:
                if not self._a_held:  # a fresh press on the ground starts a jump
                    self._jump_armed = False
                elif self._jump_armed:  # held from before the landing: release once
                    self._jump_armed = False
                    buttons &= ~A_BUTTON
        self._a_held = bool(buttons & A_BUTTON)
        return buttons

    @property
    def a_held(self) -> bool:
        """Whether the last frame's controller byte held A (what the next press depends on)."""
        return self._a_held

    def observe(self, out: np.ndarray | None = None) -> np.ndarray:
        """A copy of the current screen, grayscale if ``use_grayscale()`` was called."""
        mode = "grayscale" if self.grayscale else "rgb_array_contiguous"
        return self._nes.observation(mode, out)

    def rgb_frame(self) -> np.ndarray:
        """The current screen as RGB ``(240, 256, 3)``, whatever the observation mode."""
        return self._nes.observation("rgb_array_contiguous")

    def current_info(self) -> dict[str, Any]:
        nes = self._nes
        return self._with_max(
            {
                "x_pos": nes._x_position,
                "flag_get": bool(nes._flag_get),
                "life": nes._life,
                "world": nes._world,
                "stage": nes._stage,
                "score": nes._score,
                "time": nes._time,
            }
        )

    def _small_info(self, nes_info: dict[str, Any]) -> dict[str, Any]:
        return self._with_max(
            {
                "x_pos": nes_info["x_pos"],
                "flag_get": bool(nes_info["flag_get"]),
                "life": nes_info["life"],
                "world": nes_info["world"],
                "stage": nes_info["stage"],
                "score": nes_info["score"],
                "time": nes_info["time"],
            }
        )

    def _with_max(self, info: dict[str, Any]) -> dict[str, Any]:
        self._max_x = max(self._max_x, info["x_pos"])
        info["max_x_pos"] = self._max_x
        info["stage_name"] = self._spec.label
        return info

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self.rgb_frame()
        return None

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
