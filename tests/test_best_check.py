"""best.pt chosen by greedy play from every eval start, on the real emulator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mario_cli.config import MarioConfig
from mario_cli.envs import make_env
from mario_cli.envs.stages import action_names
from mario_cli.eval_protocol import DEFAULT_NOOP_MAX
from mario_cli.evaluation import Agent, play_episode
from mario_cli.events import CheckpointSaved, IterationStats, Notice
from mario_cli.training.best_check import (
    CLEAR_WEIGHT,
    MAX_STARTS,
    GreedyBestCheck,
    GreedyScore,
    clears_of,
    eval_starts,
    out_of_reach,
)
from mario_cli.training.checkpoint import (
    GREEDY_BEST,
    ROLLOUT_BEST,
    CheckpointManager,
    load_checkpoint,
)
from mario_cli.training.repair import stage_env_config
from tests.test_training import tiny_config, train

RIGHT_A_B = action_names("simple").index("right+A+B")


class HoldRightAB(nn.Module):
    """A policy that always picks right+A+B (it dies at x ~1,125 on 1-1)."""

    recurrent = False

    def act(self, obs, state=None, done=None, deterministic=False):
        n = obs.shape[0]
        return torch.full((n,), RIGHT_A_B), torch.zeros(n), torch.zeros(n), state


def test_the_starts_are_eval_starts() -> None:
    # One stage: every no-op count mario eval can draw, once, the first ones spread out.
    one = eval_starts(1)
    assert sorted(one) == [(0, noop) for noop in range(DEFAULT_NOOP_MAX + 1)]
    assert [noop for _, noop in one[:8]] == [0, 16, 8, 24, 4, 20, 12, 28]
    assert eval_starts(1, 0) == [(0, 0)]
    # Many stages: at most MAX_STARTS, each stage the same spread from 0 to noop_max.
    many = eval_starts(32)
    assert len(many) <= MAX_STARTS and {stage for stage, _ in many} == set(range(32))
    assert {noop for stage, noop in many if stage == 5} == {0, DEFAULT_NOOP_MAX}
    three = eval_starts(3)
    assert len(set(three)) == 3 * 21 and len({n for s, n in three if s == 0}) == 21


def test_a_check_stops_when_it_cannot_or_very_likely_will_not_win() -> None:
    best = GreedyScore(31, 31, 17, 2_600.0, 0.0).value  # best.pt clears 17/31
    miss, clear = (False, 1_400), (True, 3_161)
    assert not out_of_reach([miss] * 5, 26, None)  # no best.pt yet: play every start
    nearly_all = GreedyScore(31, 31, 30, 3_000.0, 0.0).value  # best.pt clears 30/31
    assert out_of_reach([miss] * 2, 29, nearly_all)  # 29 left cannot make 30
    assert not out_of_reach([miss], 30, nearly_all)  # 30 left still could
    # after 8 starts: 2/8 is more than 0.2 below 17/31, 4/8 is not
    assert out_of_reach([clear] * 2 + [miss] * 6, 23, best)
    assert not out_of_reach([clear] * 4 + [miss] * 4, 23, best)
    assert not out_of_reach([clear] * 1 + [miss] * 6, 24, best)  # 7 starts: too few to judge
    # while best.pt clears nothing, a mean max x 10% below its ends the check
    far = GreedyScore(31, 31, 0, 1_500.0, 0.0).value
    assert out_of_reach([(False, 1_300)] * 8, 23, far)
    assert not out_of_reach([(False, 1_400)] * 8, 23, far)
    assert not out_of_reach([(True, 3_161)] + [(False, 300)] * 7, 23, far)  # a clear beats it


def test_a_clear_outweighs_any_max_x_and_the_clears_come_back_out() -> None:
    cleared_17 = GreedyScore(31, 31, 17, 1_000.0, 1.0)
    cleared_16 = GreedyScore(31, 31, 16, 3_900.0, 1.0)
    assert cleared_17.value > cleared_16.value
    assert cleared_17.clear_rate == pytest.approx(17 / 31)
    for score in (cleared_17, cleared_16, GreedyScore(64, 64, 63, 3_999.0, 0.0)):
        assert clears_of(score.value, score.starts) == score.clears
    assert clears_of(GreedyScore(31, 31, 0, 2_500.0, 0.0).value, 31) == 0
    assert CLEAR_WEIGHT / MAX_STARTS > 4_000  # one clear in a full check beats any mean max x


def test_a_check_scores_what_mario_eval_sees_and_stops_once_it_cannot_win() -> None:
    cfg = MarioConfig.model_validate({"train": {"best_noop_max": 3}})
    policy = HoldRightAB()
    check = GreedyBestCheck(cfg, policy, torch.device("cpu"))
    assert sorted(check.starts) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    threads = torch.get_num_threads()
    try:
        score = check.score(None)
        assert score.complete and score.played == 4 and score.clears == 0
        assert 1_100 < score.mean_max_x < 1_200
        assert policy.training and torch.get_num_threads() == threads  # restored
        # the same starts played by mario eval's own episode loop give the same max x
        env = make_env(stage_env_config(cfg, check.specs[0]))
        agent = Agent(policy, cfg, Path("none.pt"))
        xs = []
        for noop in range(4):
            xs.append(play_episode(agent, env, True, 5000, noop, noop_frames=noop)["max_x_pos"])
        env.close()
        assert score.mean_max_x == pytest.approx(sum(xs) / 4, abs=2)

        # best.pt cleared 3 of 4: after two misses this policy cannot reach 3
        best = GreedyScore(4, 4, 3, 2_000.0, 0.0).value
        stopped = check.score(best)
        assert not stopped.complete and stopped.played == 2 and stopped.clears == 0
        assert "not going to beat best.pt" in stopped.describe()
        assert check.checks == 2 and check.seconds > 0
    finally:
        check.close()


class ActsOnWhatItSees(nn.Module):
    """A policy whose action is a function of the frames, so every start plays its own path."""

    recurrent = False

    def act(self, obs, state=None, done=None, deterministic=False):
        n = obs.shape[0]
        actions = obs.flatten(1).long().sum(dim=1) % 7
        return actions, torch.zeros(n), torch.zeros(n), state


def test_stepping_the_paths_in_threads_plays_the_same_paths() -> None:
    from mario_cli.training import best_check

    cfg = MarioConfig.model_validate({"train": {"best_noop_max": 11}})  # 12 starts, 8 at once
    outcomes = {}
    for threads in (1, 3):
        check = GreedyBestCheck(cfg, ActsOnWhatItSees(), torch.device("cpu"), step_threads=threads)
        assert check.step_threads == threads
        played = []
        real_advance = best_check._Path.advance

        def advance(path, info, done, played=played, real_advance=real_advance):
            ended = real_advance(path, info, done)
            if ended is not None:
                played.append((path.noop, path.steps, *ended))
            return ended

        best_check._Path.advance = advance
        try:
            check.score(None)
        finally:
            best_check._Path.advance = real_advance
            check.close()
        outcomes[threads] = sorted(played)
    assert len(outcomes[1]) == 12
    assert len({(steps, x) for _, steps, _, x in outcomes[1]}) > 1  # the paths differ
    assert outcomes[3] == outcomes[1]


def test_best_of_another_kind_is_replaced_by_the_first_greedy_score(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=2)
    assert manager.save_best({"tag": "old"}, 8_000.0)  # rollout-scored (the default)
    assert manager.best_by == ROLLOUT_BEST
    assert manager.best_score_by(GREEDY_BEST) is None
    assert manager.save_best({"tag": "greedy"}, 300.0, GREEDY_BEST)
    assert not manager.save_best({"tag": "worse"}, 200.0, GREEDY_BEST)
    again = CheckpointManager(tmp_path, keep=2)  # as a resumed run reads it
    assert again.best_by == GREEDY_BEST and again.best_score_by(GREEDY_BEST) == 300.0
    saved = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert saved["tag"] == "greedy" and saved["best_by"] == GREEDY_BEST


def test_training_keeps_the_greedy_best_and_reports_its_checks(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path,
        # The trainer's draws: with the workers' (seeded otherwise) the weights at step 64
        # happen to clear both starts, and a perfect best.pt ends the checks (tested below).
        train={
            "total_timesteps": 96,
            "best_check_every": 64,
            "best_noop_max": 1,
            "acting": "trainer",
        },
        repair={"repair_every": 0},
    )
    trainer, events = train(cfg)
    stats = [e for e in events if isinstance(e, IterationStats)]
    assert [s.step for s in stats] == [32, 64, 96]
    assert "best/checks" not in stats[0].metrics  # the first check is at 64
    assert stats[1].metrics["best/checks"] == 1 and stats[1].metrics["best/step"] == 64
    # 96 is off the schedule, but the run ends there: a last check judges the final weights
    assert stats[-1].metrics["best/checks"] == 2 and "best/clear_rate" in stats[-1].metrics
    checks = [e.message for e in events if isinstance(e, Notice) and "best check" in e.message]
    assert len(checks) == 2 and "eval starts" in checks[0] and "saved as best.pt" in checks[0]
    saved = [e.step for e in events if isinstance(e, CheckpointSaved) and e.kind == "best"]
    assert saved in ([64], [64, 96])
    best = load_checkpoint(trainer.checkpoints.best_path)
    assert best["best_by"] == GREEDY_BEST and best["global_step"] == saved[-1]
    assert ("saved as best.pt" in checks[1]) == (saved == [64, 96])
    assert trainer.timer.seconds["best"] > 0


def test_rollout_best_by_takes_no_greedy_checks(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, train={"best_by": "rollout", "best_check_every": 32})
    trainer, events = train(cfg)
    assert trainer.best_check is None
    assert not any(isinstance(e, Notice) and "best check" in e.message for e in events)
    assert all("best/checks" not in e.metrics for e in events if isinstance(e, IterationStats))


def test_the_clears_a_check_plays_are_kept_for_repair(tmp_path: Path, monkeypatch) -> None:
    from mario_cli.training import best_check

    real_advance = best_check._Path.advance

    def clears_after_five(self, info, done):  # stands in for a policy that clears
        ended = real_advance(self, info, done)
        return (True, self.max_x) if ended is None and self.steps == 5 else ended

    monkeypatch.setattr(best_check._Path, "advance", clears_after_five)
    cfg = MarioConfig.model_validate({"train": {"best_noop_max": 2}})
    check = GreedyBestCheck(cfg, HoldRightAB(), torch.device("cpu"))
    check.keep_clears = True
    try:
        score = check.score(None)
        env = make_env(stage_env_config(cfg, check.specs[0]))
        first_frames = {n: env.reset(options={"noop_frames": n})[0] for n in range(3)}
        env.close()
    finally:
        check.close()
    assert score.clears == 3 and sorted(p.noop for p in score.cleared) == [0, 1, 2]
    for path in score.cleared:
        assert path.stage == "1-1" and path.actions == [RIGHT_A_B] * 5
        assert len(path.observations) == 5
        assert (path.observations[0] == first_frames[path.noop]).all()  # before each step

    from tests.test_repair import _repair_for

    repair = _repair_for(tmp_path)
    repair.keep_clears(score.cleared)
    assert sorted(repair.cleared) == [("1-1", 0), ("1-1", 1), ("1-1", 2)]
    assert not repair.repaired and all(not p.fixes for p in repair.paths)


def test_training_goes_back_to_best_after_checks_that_do_not_beat_it(
    tmp_path: Path, monkeypatch
) -> None:
    from mario_cli.training.trainer import Trainer

    scores = iter([GreedyScore(2, 2, 1, 1_000.0, 0.0)] + [GreedyScore(2, 2, 0, 90.0, 0.0)] * 4)
    monkeypatch.setattr(GreedyBestCheck, "score", lambda self, best: next(scores))
    cfg = tiny_config(
        tmp_path,
        train={"total_timesteps": 160, "best_check_every": 32, "best_revert_after": 2},
        repair={"repair_every": 0},
    )
    weights: dict[int, dict[str, torch.Tensor]] = {}
    events: list = []

    def sink(event) -> None:
        events.append(event)
        if isinstance(event, IterationStats):  # emitted after the iteration's check
            state = trainer.policy.state_dict()
            weights[event.step] = {k: v.detach().clone() for k, v in state.items()}

    trainer = Trainer(cfg, [sink])
    trainer.train()
    best = load_checkpoint(trainer.checkpoints.best_path)
    assert best["global_step"] == 32

    def same_as_best(step: int) -> bool:
        return all(torch.equal(weights[step][k], v) for k, v in best["model"].items())

    # Checks at 64 and 96 did not beat best.pt: after the second, its weights are back.
    assert same_as_best(32) and not same_as_best(64) and same_as_best(96)
    assert not same_as_best(128) and same_as_best(160)  # and again two checks later
    reverts = [e.metrics["best/reverts"] for e in events if isinstance(e, IterationStats)]
    assert reverts == [0, 0, 1, 1, 2]
    notices = [e.message for e in events if isinstance(e, Notice) and "goes back" in e.message]
    assert len(notices) == 2 and "best.pt's weights (step 32)" in notices[0]
    assert trainer.global_step == 160  # the step count and schedules go on


def test_going_back_to_best_needs_greedy_checks(tmp_path: Path) -> None:
    from mario_cli.config import load_config

    with pytest.raises(Exception, match="best_by = greedy"):
        load_config(cli_overrides={"train": {"best_by": "rollout", "best_revert_after": 2}})


def test_the_checks_stop_once_best_clears_every_start(tmp_path: Path, monkeypatch) -> None:
    played: list[int] = []

    def score(self, best):
        played.append(len(played))
        return GreedyScore(2, 2, 2, 3_161.0, 0.0)

    monkeypatch.setattr(GreedyBestCheck, "score", score)
    cfg = tiny_config(
        tmp_path,
        train={"total_timesteps": 128, "best_check_every": 32, "best_noop_max": 1},
        repair={"repair_every": 0},
    )
    trainer, events = train(cfg)
    assert played == [0]  # due at 32, 64, 96 and 128: only the first is played
    notices = [e.message for e in events if isinstance(e, Notice) and "best check" in e.message]
    assert len(notices) == 2 and "saved as best.pt" in notices[0]
    assert "clears all 2 eval starts" in notices[1] and "no more best checks" in notices[1]
    stats = [e for e in events if isinstance(e, IterationStats)]
    assert stats[-1].metrics["best/clear_rate"] == 1.0
    assert load_checkpoint(trainer.checkpoints.best_path)["global_step"] == 32


def test_a_check_that_ties_best_does_not_send_training_back(tmp_path: Path, monkeypatch) -> None:
    scores = iter([GreedyScore(2, 2, 2, 3_161.0, 0.0)] * 4)
    monkeypatch.setattr(GreedyBestCheck, "score", lambda self, best: next(scores))
    cfg = tiny_config(
        tmp_path,
        train={"total_timesteps": 128, "best_check_every": 32, "best_revert_after": 1},
        repair={"repair_every": 0},
    )
    trainer, events = train(cfg)
    checks = [e.message for e in events if isinstance(e, Notice) and "best check" in e.message]
    assert len(checks) == 4  # with --best-revert-after the checks go on past a perfect best.pt
    assert all("as good as best.pt, which stays" in m for m in checks[1:])
    stats = [e for e in events if isinstance(e, IterationStats)]
    assert stats[-1].metrics["best/reverts"] == 0
    assert load_checkpoint(trainer.checkpoints.best_path)["global_step"] == 32
