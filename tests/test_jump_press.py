"""Jump press semantics (``env.jump_press``) on the real emulator.

nes-py holds the controller byte across frames and the NES starts a jump only
when A goes from released to pressed, so a held A never jumps twice. With
``jump_press`` the core releases a held A for one frame once per landing.
"""

from __future__ import annotations

import numpy as np
from gym_super_mario_bros import SuperMarioBrosEnv

from mario_cli.config import EnvConfig
from mario_cli.envs import make_env
from mario_cli.envs.core import A_BUTTON, FLOAT_STATE, MarioCore
from mario_cli.envs.stages import action_bytes, action_names, parse_env_id

NOOP, RIGHT = 0, 1
RIGHT_A_B = action_names("simple").index("right+A+B")
A_ONLY = action_names("simple").index("A")
Y_ON_SCREEN = 0x00CE  # Mario's y on screen: smaller is higher (176 standing on 1-1's floor)


def _env(jump_press: bool, frame_skip: int = 1, movement: str = "simple"):
    wrappers = ["frame_skip"] if frame_skip > 1 else []
    cfg = EnvConfig(
        reward={"no_progress_cut_steps": 0},
        wrappers=wrappers,
        restarts={"share": 0.0},
        frame_skip=frame_skip,
        movement=movement,
        jump_press=jump_press,
    )
    env = make_env(cfg)
    env.reset(seed=0)
    return env


def _max_x_holding(action: int, jump_press: bool, movement: str = "simple") -> int:
    env = _env(jump_press, frame_skip=4, movement=movement)
    max_x = 0
    for _ in range(400):
        _, _, terminated, truncated, info = env.step(action)
        max_x = max(max_x, info["x_pos"])
        if terminated or truncated:
            break
    env.close()
    return max_x


def _jumps(env, action: int, frames: int) -> list[int]:
    """Peak y (smallest y on screen) of each completed jump while holding ``action``."""
    ram = env.unwrapped._nes.ram
    peaks, peak = [], None
    for _ in range(frames):
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
        if ram[FLOAT_STATE]:
            peak = int(ram[Y_ON_SCREEN]) if peak is None else min(peak, int(ram[Y_ON_SCREEN]))
        elif peak is not None:
            peaks.append(peak)
            peak = None
    return peaks


def test_default_is_on_and_make_env_passes_it() -> None:
    assert EnvConfig().jump_press is True
    for jump_press in (False, True):
        env = _env(jump_press)
        assert env.unwrapped.jump_press is jump_press
        env.close()


def test_constant_right_a_b_passes_the_goomba_and_the_first_pipe_only_with_jump_press() -> None:
    assert RIGHT_A_B == 4
    off = _max_x_holding(RIGHT_A_B, jump_press=False)
    on = _max_x_holding(RIGHT_A_B, jump_press=True)
    assert 300 <= off < 400  # dies at the goomba near x = 314: A stays held, no second jump
    assert on > 700  # measured 1,130: past the goomba and the first tall pipe (x ~ 600-650)


def test_every_action_set_gets_the_semantics() -> None:
    for movement in ("right_only", "complex"):
        index = action_names(movement).index("right+A+B")
        assert _max_x_holding(index, jump_press=True, movement=movement) > 700
        assert _max_x_holding(index, jump_press=False, movement=movement) < 400


def test_a_jump_after_a_landing_is_as_high_as_a_fresh_held_a_jump() -> None:
    # jump_press off: from standing, A pressed fresh and held. One jump only.
    off = _env(False)
    for _ in range(10):
        off.step(NOOP)
    off_peaks = _jumps(off, A_ONLY, 150)
    off.close()
    assert len(off_peaks) == 1
    assert 176 - off_peaks[0] > 50  # a full jump, not a ~30 px hop

    # jump_press on: A held throughout; every landing releases it once and jumps again.
    on = _env(True)
    for _ in range(10):
        on.step(NOOP)
    on_peaks = _jumps(on, A_ONLY, 150)
    on.close()
    assert len(on_peaks) >= 2
    assert all(abs(peak - off_peaks[0]) <= 1 for peak in on_peaks), (on_peaks, off_peaks)


class _PerFrameRelease(MarioCore):
    """The trap: release a held A on every frame that reads "on the ground"."""

    def _buttons_for(self, action: int) -> int:
        buttons = self._buttons[action]
        if self._a_held and buttons & A_BUTTON and not self._ram[FLOAT_STATE]:
            buttons &= ~A_BUTTON
        self._a_held = bool(buttons & A_BUTTON)
        return buttons


def _press_log(core: MarioCore, frames: int) -> list[tuple[bool, bool]]:
    """(airborne before the frame, A released although the action holds A) per frame."""
    log: list[tuple[bool, bool]] = []
    choose = core._buttons_for

    def recording(action: int) -> int:
        airborne = bool(core._ram[FLOAT_STATE])
        buttons = choose(action)
        log.append((airborne, not buttons & A_BUTTON))
        return buttons

    core._buttons_for = recording  # type: ignore[method-assign]
    for _ in range(frames):
        _, _, terminated, truncated, _ = core.step(RIGHT_A_B)
        if terminated or truncated:
            break
    return log


def _release_violations(log: list[tuple[bool, bool]]) -> int:
    """Releases in the air, or a second release without Mario airborne since the last."""
    violations, airborne_since_release = 0, True
    for airborne, released in log:
        airborne_since_release |= airborne
        if released:
            violations += airborne or not airborne_since_release
            airborne_since_release = False
    return violations


def test_a_is_released_once_per_landing_not_at_take_off() -> None:
    spec = parse_env_id("SuperMarioBros-1-1-v0")
    core = MarioCore([spec], "simple", env_reward=False, jump_press=True)
    core.reset()
    log = _press_log(core, 400)
    core.close()
    releases = sum(released for _, released in log)
    takeoffs = sum(1 for i in range(1, len(log)) if log[i][0] and not log[i - 1][0])
    assert releases >= 3
    assert takeoffs >= releases  # each release was followed by a jump
    assert _release_violations(log) == 0

    # The per-frame rule releases again on the take-off frame: the check catches it.
    trap = _PerFrameRelease([spec], "simple", env_reward=False, jump_press=True)
    trap.reset()
    assert _release_violations(_press_log(trap, 400)) > 0
    trap.close()


def test_off_is_the_old_byte_for_byte_stepping() -> None:
    pattern = [RIGHT_A_B] * 8 + [RIGHT] * 3 + [A_ONLY] * 2 + [2] * 6 + [NOOP] * 2 + [3] * 4
    actions = (pattern * 5)[:100]
    env = _env(False, frame_skip=4)
    reference = SuperMarioBrosEnv(target=(1, 1))
    reference.reset()
    buttons = action_bytes("simple")
    xs, ref_xs = [], []
    for action in actions:
        _, _, terminated, _, info = env.step(action)
        for _ in range(4):
            _, _, ref_terminated, _, ref_info = reference.step(buttons[action])
            if ref_terminated:
                break
        xs.append(info["x_pos"])
        ref_xs.append(ref_info["x_pos"])
        assert terminated == ref_terminated
        if terminated:
            break
    assert xs == ref_xs
    assert np.array_equal(env.unwrapped._nes.ram, reference.ram)
    env.close()
    reference.close()

    on = _env(True, frame_skip=4)
    on_xs = [on.step(action)[4]["x_pos"] for action in actions[: len(xs)]]
    on.close()
    assert on_xs != xs  # the option changes what the NES sees


def test_reset_controls_resyncs_after_a_state_restore() -> None:
    # A snapshot of Mario standing with A held since before his landing.
    off = _env(False)
    for _ in range(80):
        off.step(A_ONLY)
    nes = off.unwrapped._nes
    assert nes.ram[FLOAT_STATE] == 0
    snapshot = nes.dump_state()

    on = _env(True)
    core = on.unwrapped
    core._nes.load_state(snapshot)
    core._reset_controls()
    assert core._a_held
    peaks = _jumps(on, A_ONLY, 60)
    assert peaks and 176 - peaks[0] > 50  # the held A jumps at once, full height
    on.close()
    off.close()


def test_held_a_marker_shows_whether_a_is_held_without_jump_press() -> None:
    cfg = EnvConfig(
        reward={"no_progress_cut_steps": 0},
        wrappers=["frame_skip", "grayscale", "resize", "held_a_marker", "frame_stack"],
        restarts={"share": 0.0},
        jump_press=False,
    )
    env = make_env(cfg)
    obs, _ = env.reset(seed=0)
    corner = (slice(None), slice(0, 6), slice(0, 6))
    assert obs.shape == (4, 84, 84) and (obs[corner] == 0).all()  # released after a reset
    marks = []
    for action in (RIGHT_A_B, RIGHT_A_B, RIGHT, A_ONLY, NOOP):
        obs, *_ = env.step(action)
        newest = obs[-1, :6, :6]
        assert len(np.unique(newest)) == 1  # the whole corner is the marker
        marks.append(int(newest[0, 0]))
    assert marks == [255, 255, 0, 255, 0]
    # the oldest stacked frames keep the marks of their own steps
    assert [int(obs[k, 0, 0]) for k in range(4)] == [255, 0, 255, 0]
    assert obs[-1, 40:, 6:].std() > 0  # the rest of the frame is the game
    env.close()
