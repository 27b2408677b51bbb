"""Saving deviations of a greedy path, on the real emulator (1-1 with jump press)."""

from __future__ import annotations

from mario_cli.config import EnvConfig
from mario_cli.deviations import greedy_path, saving_deviations
from mario_cli.envs import make_env
from mario_cli.envs.stages import action_names

NAMES = action_names("simple")
RIGHT_A_B = NAMES.index("right+A+B")
NOOP = NAMES.index("NOOP")


def hold_right_a_b(obs) -> int:
    return RIGHT_A_B


def test_a_one_step_release_before_the_pit_saves_constant_right_a_b() -> None:
    env = make_env(EnvConfig(reward={"no_progress_cut_steps": 0}, restarts={"share": 0.0}))
    path = greedy_path(env, hold_right_a_b)
    # the hop rhythm of a held right+A+B falls into the first pit
    assert not path.cleared and 1_100 < path.max_x < 1_200
    assert len(path.states) == len(path.observations) == len(path.actions) == len(path.xs)

    found = saving_deviations(env, hold_right_a_b, path, window=20, actions=[NOOP], horizon=60)
    assert found, "a NOOP somewhere in the last 20 steps should land the rhythm past the pit"
    last = len(path.actions)
    for deviation in found:
        assert last - 20 <= deviation.step < last and deviation.action == NOOP
        assert deviation.max_x >= path.max_x + 64 and deviation.exact_restore
        assert deviation.x == path.xs[deviation.step - 1]

    # a restored trial is the same game as playing the whole path again from the start
    first = found[0]
    obs, info = env.reset(options={"noop_frames": 0})
    life = info["life"]
    for action in path.actions[: first.step]:
        obs, *_ = env.step(action)
    best = 0
    for t in range(61):
        obs, _, terminated, truncated, info = env.step(NOOP if t == 0 else RIGHT_A_B)
        best = max(best, info["x_pos"])
        if terminated or truncated or info["life"] < life:
            break
    assert best == first.max_x
    env.close()
