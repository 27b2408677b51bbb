"""Greedy-path repair: the search on the real emulator, the imitation, the trainer's use."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mario_cli.config import EnvConfig, load_config
from mario_cli.deviations import first_repair, greedy_path, replay_from_start
from mario_cli.envs import make_env
from mario_cli.envs.stages import action_names
from mario_cli.errors import ConfigError
from mario_cli.events import IterationStats, Notice
from mario_cli.training.builders import build_policy
from mario_cli.training.optim import GradientStepper
from mario_cli.training.repair import PathRepair, candidate_actions
from tests.test_training import tiny_config, train

NAMES = action_names("simple")
RIGHT_A_B = NAMES.index("right+A+B")


def hold_right_a_b(obs) -> int:
    return RIGHT_A_B


def test_the_repaired_path_is_a_real_path_past_the_death() -> None:
    env = make_env(EnvConfig(reward={"no_progress_cut_steps": 0}, restarts={"share": 0.0}))
    path = greedy_path(env, hold_right_a_b, keep_states=30)
    assert path.died and 1_100 < path.max_x < 1_200
    assert all(state is None for state in path.states[:-30])  # only the last 30 kept

    search = first_repair(env, hold_right_a_b, path, 24, range(len(NAMES)))
    repair = search.repair
    assert repair is not None and search.trials > 0 and not search.out_of_budget
    assert search.env_steps > search.trials  # each trial steps the env several times
    fix = repair.deviation
    last = len(path.actions)
    assert last - 24 <= fix.step < last and fix.action != RIGHT_A_B
    assert fix.max_x >= path.max_x + 64
    # the path's own steps up to the fix, the fix, then the chooser's steps
    assert repair.actions[: fix.step] == path.actions[: fix.step]
    assert repair.actions[fix.step] == fix.action
    assert all(a == RIGHT_A_B for a in repair.actions[fix.step + 1 :])
    assert len(repair.observations) == len(repair.actions)

    # played again from the start, it is the same game: same frames, past the death
    obs, info = env.reset(options={"noop_frames": 0})
    life, best = info["life"], 0
    for seen, action in zip(repair.observations, repair.actions, strict=True):
        assert np.array_equal(obs, seen)
        obs, _, terminated, _, info = env.step(action)
        best = max(best, info["x_pos"])
        assert not terminated and info["life"] == life
    assert best >= path.max_x + 64

    # no later step saves it: the latest saving step is the one returned
    later = last - fix.step - 1
    assert first_repair(env, hold_right_a_b, path, later, range(len(NAMES))).repair is None
    # a budget smaller than the search stops it and says so
    capped = first_repair(env, hold_right_a_b, path, 24, range(len(NAMES)), max_env_steps=50)
    assert capped.repair is None and capped.out_of_budget and capped.env_steps >= 50

    # a change held for several steps: the fix covers them all
    noop = NAMES.index("NOOP")
    held = first_repair(env, hold_right_a_b, path, 24, [noop], lengths=(2,)).repair
    assert held is not None and held.deviation.length == 2
    assert [held.actions[i] for i in held.fix_indices] == [noop, noop]
    assert held.fix_indices == [held.deviation.step, held.deviation.step + 1]

    # the start-to-end replay used to verify a fix plays the same frames
    replay = replay_from_start(env, 0, repair.actions)
    assert replay.actions == repair.actions and replay.max_x >= path.max_x + 64
    assert all(
        np.array_equal(a, b) for a, b in zip(replay.observations, repair.observations, strict=True)
    )
    env.close()


def test_a_search_in_threads_finds_the_same_repair_at_the_same_cost() -> None:
    cfg = EnvConfig(reward={"no_progress_cut_steps": 0}, restarts={"share": 0.0})
    env, *more = [make_env(cfg) for _ in range(3)]
    path = greedy_path(env, hold_right_a_b, keep_states=30)
    for budget in (None, 200):
        alone = first_repair(env, hold_right_a_b, path, 24, range(len(NAMES)), max_env_steps=budget)
        threaded = first_repair(
            env, hold_right_a_b, path, 24, range(len(NAMES)), max_env_steps=budget, more_envs=more
        )
        assert (threaded.trials, threaded.env_steps) == (alone.trials, alone.env_steps)
        assert threaded.out_of_budget == alone.out_of_budget == (budget is not None)
        if budget is None:
            assert alone.repair is not None and threaded.repair is not None
            assert threaded.repair.deviation == alone.repair.deviation
            assert threaded.repair.actions == alone.repair.actions
            pairs = zip(threaded.repair.observations, alone.repair.observations, strict=True)
            assert all(np.array_equal(a, b) for a, b in pairs)
    for each in (env, *more):
        each.close()


def test_candidates_are_every_action_or_those_without_a() -> None:
    assert candidate_actions("simple", "all") == list(range(7))
    release = candidate_actions("simple", "release")
    assert [NAMES[i] for i in release] == ["NOOP", "right", "right+B", "left"]
    assert [action_names("right_only")[i] for i in candidate_actions("right_only", "release")] == [
        "NOOP",
        "right",
        "right+B",
    ]


def _repair_for(tmp_path: Path, **repair: object) -> PathRepair:
    cfg = load_config(
        cli_overrides={
            "repair": {"repair_every": 1000, **repair},
            "algo": {"learning_rate": 1e-3},
            "train": {"artifacts_dir": str(tmp_path)},
        },
        environ={},
    )
    torch.manual_seed(0)
    policy, _ = build_policy(cfg, (4, 84, 84), 7, torch.device("cpu"))
    optimiser = GradientStepper(policy.parameters(), cfg.algo, 100, torch.device("cpu"))
    return PathRepair(cfg, policy, optimiser, torch.device("cpu"))


def test_a_search_uses_no_more_threads_than_a_step_has_changes(tmp_path: Path) -> None:
    repair = _repair_for(tmp_path)
    assert len(repair.candidates) == 7  # simple movement: every action may be a change
    assert repair.search_threads == min(os.cpu_count() or 1, 7)
    on_64_cores = PathRepair(repair.cfg, repair.policy, repair.optimiser, repair.device, 64)
    assert on_64_cores.search_threads == 7


def test_imitation_teaches_the_kept_paths_with_the_fix_in_every_batch(tmp_path: Path) -> None:
    repair = _repair_for(tmp_path, repair_batch=8, repair_steps=4)
    assert repair.imitate() == {}  # nothing kept: no step, no metrics
    rng = np.random.default_rng(0)
    observations = list(rng.integers(0, 255, (60, 4, 84, 84), dtype=np.uint8))
    actions = [RIGHT_A_B] * 60
    actions[50] = NAMES.index("NOOP")  # the fix: one step in sixty
    repair._keep(("1-1", 3), observations, actions, [50])

    first = repair.imitate()
    assert first["repair/paths"] == 1 and first["repair/demo_steps"] == 60
    for _ in range(25):
        last = repair.imitate()
    assert last["repair/imitation_loss"] < first["repair/imitation_loss"]
    # the fix is in every batch of 8 (drawn alone it would be in ~13% of them)
    assert last["repair/fix_accuracy"] == 1.0 and last["repair/accuracy"] == 1.0
    with torch.no_grad():
        picked = repair.policy(torch.from_numpy(np.stack(observations))).logits.argmax(-1)
    assert picked.tolist() == actions


def test_a_new_path_for_a_start_replaces_its_old_one_and_the_oldest_go(tmp_path: Path) -> None:
    repair = _repair_for(tmp_path, repair_paths=2, repair_cleared=2)
    frame = np.zeros((4, 84, 84), dtype=np.uint8)
    repair._keep(("1-1", 0), [frame] * 3, [1, 1, 1], [2])  # repaired
    repair._keep(("1-1", 5), [frame] * 4, [1, 1, 1, 1], [])  # cleared
    repair._keep(("1-1", 0), [frame] * 5, [1] * 5, [3, 4])  # start 0 repaired again
    assert list(repair.repaired) == [("1-1", 0)] and len(repair.repaired[("1-1", 0)].actions) == 5
    assert list(repair.cleared) == [("1-1", 5)]
    # repairs of other starts push out the oldest repair, never a clear
    repair._keep(("1-1", 9), [frame] * 2, [1, 1], [0])
    repair._keep(("1-1", 7), [frame] * 2, [1, 1], [1])
    assert list(repair.repaired) == [("1-1", 9), ("1-1", 7)]
    assert list(repair.cleared) == [("1-1", 5)]
    # a start that dies after it cleared keeps its clear beside the repair
    repair._keep(("1-1", 5), [frame] * 3, [1, 1, 1], [2])
    assert ("1-1", 5) in repair.cleared and ("1-1", 5) in repair.repaired
    # a clear replaces its start's repair; clears beyond repair_cleared push out the oldest
    repair._keep(("1-1", 7), [frame] * 6, [1] * 6, [])
    assert list(repair.cleared) == [("1-1", 5), ("1-1", 7)]
    assert list(repair.repaired) == [("1-1", 5)]  # 9 went when 5's repair came
    repair._keep(("1-1", 1), [frame] * 2, [1, 1], [])
    assert list(repair.cleared) == [("1-1", 7), ("1-1", 1)]
    obs, actions, fixes = repair._demos()  # cleared first (6 + 2 steps), then 5's repair
    assert len(obs) == len(actions) == 11 and fixes.tolist() == [10]


def test_checks_come_at_multiples_of_repair_every(tmp_path: Path, monkeypatch) -> None:
    repair = _repair_for(tmp_path, repair_every=1000)
    checked: list[int] = []
    monkeypatch.setattr(repair, "check", lambda: (checked.append(step), ("died", False))[1])
    for step in (512, 1024, 1536, 2048, 2560, 3072):
        _, notices = repair.after_update(step)
        assert notices == (["died"] if step in (1024, 2048, 3072) else [])
    assert checked == [1024, 2048, 3072]
    resumed = _repair_for(tmp_path, repair_every=1000)
    monkeypatch.setattr(resumed, "check", lambda: (checked.append(-step), ("died", False))[1])
    for step in (5120, 5632, 6144):  # a resumed run: the next multiple, not at once
        resumed.after_update(step)
    assert checked == [1024, 2048, 3072, -6144]


def test_checks_back_off_while_greedy_play_clears_and_return_at_a_failure(
    tmp_path: Path, monkeypatch
) -> None:
    repair = _repair_for(tmp_path, repair_every=1000, repair_backoff=4)
    outcomes = iter([True, True, False, *[True] * 12, False, True])
    checked: list[int] = []

    def check() -> tuple[str, bool]:
        checked.append(step)
        cleared = next(outcomes)
        return ("cleared" if cleared else "died"), cleared

    monkeypatch.setattr(repair, "check", check)
    notices, intervals = [], []
    for step in range(500, 37_000, 500):
        metrics, said = repair.after_update(step)
        notices += said
        if said:
            intervals.append(metrics["repair/interval"])
    # every 4 clears in a row double the interval, up to 4x; a failure returns it to 1x
    assert checked == [
        *range(1000, 8000, 1000),  # the failure at 3,000 starts the count again
        *range(9000, 16_000, 2000),  # 4 clears in a row (4,000-7,000): 2x
        *range(19_000, 32_000, 4000),  # 8: 4x, and 12 stays at 4x (repair_backoff)
        35_000,  # died: 1x again
        36_000,
    ]
    assert intervals == [1000.0] * 6 + [2000.0] * 4 + [4000.0] * 5 + [1000.0] * 2
    assert notices[2] == notices[-2] == "died"
    assert notices[5:7] == ["cleared", "cleared; 4 clears in a row: next check in 2,000 steps"]

    never = _repair_for(tmp_path, repair_every=1000, repair_backoff=1)
    checked.clear()
    outcomes = iter([True] * 5)
    monkeypatch.setattr(never, "check", check)
    for step in range(500, 5500, 500):
        never.after_update(step)
    assert checked == [1000, 2000, 3000, 4000, 5000]


def test_training_with_repair_checks_greedy_play_and_reports_it(tmp_path: Path) -> None:
    # no back-off: this tiny run's first greedy path may clear (it holds right+A+B)
    repair = {"repair_every": 32, "repair_window": 2, "repair_backoff": 1}
    trainer, events = train(tiny_config(tmp_path, repair=repair))
    assert events[-1].status == "finished"
    stats = [e for e in events if isinstance(e, IterationStats)]
    assert [s.metrics.get("repair/checks") for s in stats] == [1.0, 2.0]
    assert all(s.metrics["repair/max_x_pos"] > 0 for s in stats)
    notes = [e.message for e in events if isinstance(e, Notice) and e.message.startswith("repair:")]
    assert len(notes) == 2 and all("greedy from 1-1 after" in note for note in notes)
    assert trainer.timer.seconds["repair"] > 0 and stats[-1].metrics["repair/seconds"] > 0
    assert trainer.repair is not None and not trainer.repair._envs  # closed with the run


def test_a_recurrent_run_trains_without_repair_and_says_so(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, repair={"repair_every": 32}, model={"recurrent": "lstm"})
    trainer, events = train(cfg)
    assert events[-1].status == "finished" and trainer.repair is None
    notes = [e.message for e in events if isinstance(e, Notice)]
    assert any(note.startswith("greedy-path repair is off for this run") for note in notes)
    stats = [e for e in events if isinstance(e, IterationStats)]
    assert stats and not any("repair/checks" in s.metrics for s in stats)
    policy, _ = build_policy(cfg, (4, 84, 84), len(NAMES), torch.device("cpu"))
    with pytest.raises(ConfigError, match="feed-forward"):
        PathRepair(cfg, policy, None, torch.device("cpu"))


def test_a_stalled_path_is_searched_where_it_stopped_getting_anywhere() -> None:
    from mario_cli.deviations import GreedyPath

    xs = [10, 20, 30, 40, 40, 39, 40, 40, 40, 40]
    path = GreedyPath(0, list(range(10)), xs, [None] * 10, [np.zeros(1)] * 10, max_x=40)
    stuck = path.stall_point(tail=2)
    assert stuck.actions == [0, 1, 2, 3, 4, 5] and stuck.xs == xs[:6]
    assert stuck.max_x == 40 and len(stuck.states) == len(stuck.observations) == 6
    assert path.stall_point(tail=50).actions == path.actions  # never past the path's end
