"""The eval start protocol: which no-op waits an eval's episodes get."""

from __future__ import annotations

import pytest

from mario_cli.errors import ConfigError
from mario_cli.eval_protocol import (
    DRAWN_START_PROTOCOL,
    check_noop_max,
    describe_start,
    episode_noops,
    start_protocol,
)


def test_every_wait_comes_once_before_any_comes_again() -> None:
    first_round = [episode_noops(0, i, 30) for i in range(31)]
    second_round = [episode_noops(0, i, 30) for i in range(31, 62)]
    assert sorted(first_round) == list(range(31))
    assert sorted(second_round) == list(range(31))
    assert first_round != second_round  # each round is dealt in a new order
    assert first_round != sorted(first_round)  # and the order is not just 0, 1, 2, ...
    twenty = first_round[:20]
    assert len(set(twenty)) == 20  # mario eval's default 20 episodes: 20 distinct starts


def test_the_order_is_the_seeds_own() -> None:
    assert [episode_noops(7, i, 30) for i in range(20)] == [
        episode_noops(7, i, 30) for i in range(20)
    ]
    assert [episode_noops(7, i, 30) for i in range(20)] != [
        episode_noops(8, i, 30) for i in range(20)
    ]


def test_no_waits_when_noop_max_is_zero_and_bad_values_say_the_fix() -> None:
    assert {episode_noops(3, i, 0) for i in range(5)} == {0}
    assert sorted(episode_noops(3, i, 1) for i in range(2)) == [0, 1]
    assert check_noop_max(0) == 0
    with pytest.raises(ConfigError, match="must be 0 or more"):
        check_noop_max(-1)


def test_results_say_how_episodes_started() -> None:
    start = start_protocol(30, 5)
    assert start["noop_max"] == 30 and start["seed"] == 5
    assert "each once" in start["protocol"]
    assert describe_start(start) == (
        "from the stage start after 0..30 no-op frames, each once in an order seeded 5"
    )
    assert describe_start(start_protocol(0, 5)) == "from the stage start, no no-op frames"
    # results from before the waits were dealt once each still say how they started
    earlier = {"protocol": DRAWN_START_PROTOCOL, "noop_max": 30, "seed": 0}
    assert "drawn independently" in describe_start(earlier)
    # and results from before eval played stuck episodes on say that training's cut ended them
    assert start["no_progress_cut"] is False
    assert describe_start(earlier).endswith(", episodes cut after no progress as in training")
    dealt = {k: v for k, v in start.items() if k != "no_progress_cut"}
    assert describe_start(dealt) == describe_start(start) + (
        ", episodes cut after no progress as in training"
    )


def test_eval_envs_keep_none_of_trainings_aids() -> None:
    from mario_cli.config import MarioConfig
    from mario_cli.eval_protocol import without_training_aids

    trained = MarioConfig().to_dict()["env"]
    assert trained["restarts"]["share"] > 0 and trained["reward"]["no_progress_cut_steps"] > 0
    played = without_training_aids(trained)
    assert played["restarts"]["share"] == 0.0 and played["reward"]["no_progress_cut_steps"] == 0
    assert played["reward"]["death_penalty"] == trained["reward"]["death_penalty"]
    assert trained["reward"]["no_progress_cut_steps"] > 0  # the caller's dict is untouched
    # a section without a reward table (a hand-written config) gets the cut off too
    bare = without_training_aids({"n_envs": 2})
    env = MarioConfig.model_validate({"env": bare}).env
    assert env.settings_of("reward").no_progress_cut_steps == 0
    # what a result then says of its episodes
    from mario_cli.eval_protocol import cuts_without_progress

    assert not cuts_without_progress(env)
    assert cuts_without_progress(MarioConfig.model_validate({"env": trained}).env)
