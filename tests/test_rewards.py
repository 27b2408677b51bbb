"""Each reward mode's terms on scripted action sequences, on the real emulator."""

from __future__ import annotations

import numpy as np
import pytest

from mario_cli.config import EnvConfig
from mario_cli.envs import make_env

NOOP, RIGHT, RIGHT_A = 0, 1, 2


def run(cfg: EnvConfig, actions: list[int]) -> list[tuple[float, bool, bool, dict]]:
    env = make_env(cfg)
    _, info = env.reset(seed=0)
    steps = [(0.0, False, False, info)]
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        steps.append((reward, terminated, truncated, info))
        if terminated or truncated:
            break
    env.close()
    return steps


def test_walking_right_earns_progress_on_new_best_x_only() -> None:
    cfg = EnvConfig(reward_mode="progress", reward={"progress_scale": 0.1, "stall_penalty": 0.0})
    steps = run(cfg, [RIGHT] * 20 + [6] * 12 + [RIGHT] * 5)  # 6 = left in the simple set
    start_x = steps[0][3]["x_pos"]
    best = start_x
    for reward, _, _, info in steps[1:]:
        gain = max(0, info["x_pos"] - best)
        best = max(best, info["x_pos"])
        assert info["reward_terms"]["progress"] == pytest.approx(0.1 * gain)
        assert reward == pytest.approx(sum(info["reward_terms"].values()))
    walked = steps[20][3]["x_pos"] - start_x
    assert walked > 50
    assert sum(s[0] for s in steps[1:21]) == pytest.approx(0.1 * walked)
    # once walking left has taken Mario behind his best x, progress pays nothing
    best_so_far = max(s[3]["x_pos"] for s in steps[:21])
    behind = [s for s in steps[21:] if s[3]["x_pos"] < best_so_far]
    assert behind, "walking left must take Mario back"
    assert all(s[3]["reward_terms"]["progress"] == 0 for s in behind)


def test_dying_costs_the_death_penalty() -> None:
    cfg = EnvConfig(
        reward_mode="progress", reward={"death_penalty": 3.0, "no_progress_cut_steps": 0}
    )
    steps = run(cfg, [RIGHT] * 200)
    reward, terminated, _, info = steps[-1]
    assert terminated and not info["flag_get"]
    assert info["reward_terms"]["death"] == -3.0
    assert all(s[3]["reward_terms"]["death"] == 0 for s in steps[1:-1])


def test_stalling_costs_the_stall_penalty_and_cuts_the_episode() -> None:
    cfg = EnvConfig(
        reward_mode="progress",
        reward={
            "stall_penalty": 0.05,
            "stall_steps": 10,
            "no_progress_cut_steps": 30,
            "no_progress_cut_penalty": 1.0,
        },
    )
    steps = run(cfg, [NOOP] * 100)
    stall = [s[3]["reward_terms"]["stall"] for s in steps[1:]]
    assert stall[:9] == [0.0] * 9
    assert stall[9:] == [-0.05] * (len(stall) - 9)
    reward, terminated, truncated, info = steps[-1]
    assert len(steps) - 1 == 30  # cut exactly after 30 steps without a new best x
    assert truncated and not terminated
    assert info["reward_terms"]["no_progress"] == -1.0
    assert info["episode"].length == 30


def test_backward_penalty_and_milestones() -> None:
    cfg = EnvConfig(
        reward_mode="progress",
        reward={
            "backward_penalty_scale": 0.5,
            "milestone_bonus": 2.0,
            "milestone_every": 100,
            "no_progress_cut_steps": 0,
        },
    )
    steps = run(cfg, [RIGHT] * 25 + [6] * 4)
    milestones = sum(s[3]["reward_terms"]["milestone"] for s in steps[1:])
    best = max(s[3]["x_pos"] for s in steps)
    assert milestones == 2.0 * (best // 100 - steps[0][3]["x_pos"] // 100)
    moved_back = [s for s in steps[26:] if s[3]["reward_terms"]["backward"] < 0]
    assert moved_back, "walking left must cost the backward penalty"


def test_raw_clip_and_score_modes_agree_with_the_env_reward() -> None:
    actions = [RIGHT_A if i % 8 < 5 else RIGHT for i in range(60)]
    raw = run(EnvConfig(reward_mode="raw", reward={"no_progress_cut_steps": 0}), actions)
    clip = run(EnvConfig(reward_mode="clip", reward={"no_progress_cut_steps": 0}), actions)
    score = run(
        EnvConfig(
            reward_mode="score",
            reward={
                "score_scale": 0.1,
                "score_divisor": 40,
                "flag_bonus": 5,
                "death_penalty": 5,
                "no_progress_cut_steps": 0,
            },
        ),
        actions,
    )
    assert len(raw) == len(clip) == len(score)
    assert any(r[0] != 0 for r in raw[1:])
    last_score = raw[0][3]["score"]
    for (r, _, _, info), (c, *_), (s, term, _, s_info) in zip(
        raw[1:], clip[1:], score[1:], strict=True
    ):
        assert c == np.sign(r)
        gained = max(0, info["score"] - last_score)
        last_score = info["score"]
        expected = 0.1 * (r + gained / 40) + (5 if info["flag_get"] else 0)
        expected -= 5 if s_info["died"] else 0
        assert s == pytest.approx(expected)
