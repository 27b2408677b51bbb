"""The env pipeline on the real emulator: observations, frame skip, stages, info."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from gym_super_mario_bros import SuperMarioBrosEnv

from mario_cli.config import EnvConfig
from mario_cli.envs import make_env
from mario_cli.envs.core import MarioCore
from mario_cli.envs.stages import action_bytes, parse_env_id
from mario_cli.errors import ConfigError
from mario_envs.wrappers import FrameSkip, GrayScale

RIGHT = 1  # index of ["right"] in every action set


def test_observation_shape_dtype_and_stack_order(env_cfg: EnvConfig) -> None:
    env = make_env(env_cfg)
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert env.observation_space.shape == (4, 84, 84)
    assert all(np.array_equal(obs[0], frame) for frame in obs)  # reset fills the stack
    previous = obs
    for _ in range(6):
        obs, *_ = env.step(RIGHT)
        assert np.array_equal(obs[:-1], previous[1:])  # oldest first, newest last
        previous = obs
    core = env.unwrapped
    newest = cv2.resize(core.observe(), (84, 84), interpolation=cv2.INTER_AREA)
    assert np.array_equal(obs[-1], newest) or obs[-1].mean() >= newest.mean()  # max-pooled
    assert obs[-1].std() > 10  # a real picture, not a blank frame
    env.close()


def test_action_sets() -> None:
    assert len(action_bytes("right_only")) == 5
    assert len(action_bytes("simple")) == 7
    assert len(action_bytes("complex")) == 12
    assert action_bytes("simple")[2] == 0b10000001  # right + A


def test_frame_skip_sums_reward_and_max_pools_last_two_frames() -> None:
    spec = parse_env_id("SuperMarioBros-1-1-v0")
    core = MarioCore([spec], "simple", env_reward=True)
    env = GrayScale(FrameSkip(core, 4))
    reference = SuperMarioBrosEnv(target=spec.target)
    env.reset()
    reference.reset()
    right_a = action_bytes("simple")[2]
    for step in range(25):
        action = 2 if step % 6 < 4 else 1
        obs, reward, terminated, truncated, info = env.step(action)
        frames, total = [], 0.0
        for _ in range(4):
            _, r, term, _, ref_info = reference.step(right_a if action == 2 else 128)
            frames.append(reference.observation("grayscale"))
            total += r
            if term:
                break
        assert reward == pytest.approx(total)
        assert info["x_pos"] == ref_info["x_pos"]
        assert np.array_equal(obs, np.maximum(frames[-1], frames[-2]))
        assert not terminated
    assert info["x_pos"] > 100  # it really moved
    reference.close()
    env.close()


def test_frame_skip_stops_at_episode_end(env_cfg: EnvConfig) -> None:
    env = make_env(env_cfg)
    env.reset(seed=0)
    for length in range(1, 200):
        _, _, terminated, truncated, info = env.step(RIGHT)
        if terminated:
            break
    episode = info["episode"]
    assert episode.length == length
    assert episode.cleared is False
    assert 250 < episode.max_x_pos < 400  # the first goomba kills a Mario who only walks
    assert episode.stage == "1-1"
    env.close()


def test_info_fields_every_step(env_cfg: EnvConfig) -> None:
    env = make_env(env_cfg)
    _, info = env.reset(seed=0)
    for key in ("x_pos", "max_x_pos", "flag_get", "life", "world", "stage"):
        assert key in info
    xs = [info["x_pos"]]
    for _ in range(10):
        _, _, _, _, info = env.step(RIGHT)
        xs.append(info["x_pos"])
        assert info["max_x_pos"] == max(xs)
        assert (info["world"], info["stage"]) == (1, 1)
    env.close()


def test_random_stage_visits_several_stages() -> None:
    cfg = EnvConfig(random_stage=True, stages=["1-1", "2-1", "3-1", "4-1"])
    env = make_env(cfg)
    seen = set()
    for seed in range(10):
        _, info = env.reset(seed=seed)
        seen.add(info["stage_name"])
        world = int(info["stage_name"].split("-")[0])
        assert info["world"] == world  # the emulator really runs that stage
    assert len(seen) >= 3
    env.close()


def test_lost_levels_id() -> None:
    env = make_env(EnvConfig(env_id="SuperMarioBros2-1-1-v0"))
    _, info = env.reset(seed=0)
    assert (info["world"], info["stage"]) == (1, 1)
    env.close()


def test_unknown_env_id_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown env id 'SuperMarioBros-9-9-v0'"):
        make_env(EnvConfig(env_id="SuperMarioBros-9-9-v0"))


def test_unknown_wrapper_lists_choices() -> None:
    with pytest.raises(ConfigError, match="unknown wrapper 'blur'.*frame_skip"):
        make_env(EnvConfig(wrappers=["frame_skip", "blur"], restarts={"share": 0.0}))
