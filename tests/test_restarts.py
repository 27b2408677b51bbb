"""Frontier restarts: the archive, restores on the real emulator, eval, metrics, resume."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from mario_cli.config import EnvConfig, MarioConfig, load_config
from mario_cli.envs import VectorEnv, make_env
from mario_cli.errors import ConfigError
from mario_cli.evaluation import load_agent
from mario_cli.events import Episode, EpisodeEnd, Event, IterationStats
from mario_cli.training.trainer import Trainer, rollout_metrics
from mario_envs.restarts import ANNEAL_EPISODES, FrontierArchive, FrontierRestarts

RIGHT, RIGHT_A = 1, 2  # in the simple action set
START_X = 40  # Mario's x at the start of 1-1


def restarts_of(env) -> FrontierRestarts:
    wrapper = env
    while not isinstance(wrapper, FrontierRestarts):
        wrapper = wrapper.env
    return wrapper


def walk_right_episode(env) -> tuple[dict, dict]:
    """Reset, then walk right until the episode ends; (reset info, episode stats)."""
    _, first = env.reset()
    while True:
        _, _, terminated, truncated, info = env.step(RIGHT)
        if terminated or truncated:
            return first, info["episode"]


# ----------------------------------------------------------------- archive
def test_archive_keeps_the_newest_states_per_bucket_and_stays_bounded() -> None:
    archive = FrontierArchive(bucket_px=32, per_bucket=2, max_states=10)
    archive.add("1-1", 10, "start")  # bucket 0: a restart there would skip nothing
    assert len(archive) == 0
    for i in range(5):
        archive.add("1-1", 100, f"s{i}")
    assert archive.buckets("1-1") == {3: 2}
    assert archive.pick("1-1", 3, np.random.default_rng(0)) in {"s3", "s4"}  # the newest
    for episode in range(20):
        for x in range(0, 3200, 16):
            archive.add(("1-1", 1, 1), x, (episode, x))
        for x in range(0, 800, 16):
            archive.add("1-2", x, (episode, x))
        assert len(archive) <= 10
        for stage in ("1-1", "1-2", ("1-1", 1, 1)):
            assert all(n <= 2 for n in archive.buckets(stage).values())


def test_archive_evicts_from_the_fullest_stage_furthest_behind_the_frontier() -> None:
    archive = FrontierArchive(bucket_px=10, per_bucket=2, max_states=6)
    for x in (10, 20, 30):
        archive.add("a", x, x)
        archive.add("a", x, x + 1)
    archive.add("b", 50, "b")  # over the bound: "a" has most, bucket 1 goes first
    assert archive.buckets("a") == {1: 1, 2: 2, 3: 2} and archive.buckets("b") == {5: 1}
    archive.add("b", 60, "b2")
    assert archive.buckets("a") == {1: 1, 2: 1, 3: 2}


def test_archive_keeps_the_approach_to_where_episodes_end() -> None:
    """The failure measured at 150k steps: one long episode must not push out the pit's run-up."""
    archive = FrontierArchive(bucket_px=32, per_bucket=2, max_states=20, runup=(1, 8))
    rng = np.random.default_rng(0)
    for episode in range(30):  # most episodes die at the first pit (x 1130, bucket 35)
        for x in range(48, 1130 - 8 * 10, 32):  # SAFE_STEPS: the last few never get kept
            archive.add("1-1", x, (episode, x))
        archive.record_end("1-1", 1130)
    for x in range(48, 3150, 32):  # a rare one reaches bucket 98
        archive.add("1-1", x, ("far", x))
    archive.record_end("1-1", 3150)
    kept = archive.buckets("1-1")
    assert len(archive) == 20
    assert all(27 <= b <= 34 for b in kept if b < 90), kept  # the pit's approach stays
    assert archive.demand("1-1")[30] == 30 and archive.demand("1-1")[50] == 0
    starts = [archive.aim("1-1", rng) for _ in range(200)]
    assert sum(s is not None and s[1] < 1130 for s in starts) > 150  # nearly every aim lands


def test_archive_picks_the_highest_bucket_at_or_before_the_target() -> None:
    archive = FrontierArchive(bucket_px=32, per_bucket=1, max_states=10)
    rng = np.random.default_rng(0)
    for x in (70, 140, 300):  # buckets 2, 4, 9
        archive.add("1-1", x, x)
    assert archive.pick("1-1", 8, rng) == 140
    assert archive.pick("1-1", 9, rng) == 300
    assert archive.pick("1-1", 1, rng) is None
    assert archive.pick("1-2", 9, rng) is None


def test_restart_share_needs_the_wrapper_and_is_bounded() -> None:
    assert EnvConfig().restarts.share == 0.5 and "restarts" in EnvConfig().wrappers
    # a wrapper list without "restarts" turns the default share off instead of failing
    assert EnvConfig(wrappers=["frame_skip", "grayscale"]).restarts.share == 0.0
    with pytest.raises(ConfigError, match="restarts"):
        load_config(
            cli_overrides={"env": {"wrappers": ["frame_skip"], "restarts": {"share": 0.5}}},
            environ={},
        )
    with pytest.raises(ConfigError, match="env.restarts.share"):
        load_config(cli_overrides={"env": {"restarts": {"share": 1.0}}}, environ={})
    # an old run's saved config (no restart_share, no "restarts") still loads
    assert EnvConfig.model_validate({"wrappers": ["frame_skip"]}).restarts.share == 0.0


# ------------------------------------------------------ the real emulator
def test_restore_starts_at_the_saved_x_and_pays_nothing_for_the_skipped_part() -> None:
    env = make_env(EnvConfig(reward={"no_progress_cut_steps": 0}))
    env.reset(seed=0)
    for _ in range(25):
        env.step(RIGHT)
    core = env.unwrapped
    saved, saved_x = core.dump_state(), core.current_info()["x_pos"]
    assert saved_x > START_X + 64
    for _ in range(5):
        env.step(RIGHT)  # move on, so the restore really goes back

    obs, info = env.reset(options={"restore": saved})
    assert info["restart"] and info["x_pos"] == info["max_x_pos"] == saved_x
    assert all(np.array_equal(obs[0], frame) for frame in obs)  # the stack is refilled
    _, reward, _, _, info = env.step(RIGHT)
    gain = info["x_pos"] - saved_x
    assert gain > 0 and info["reward_terms"]["progress"] == pytest.approx(0.1 * gain)
    assert reward == pytest.approx(0.1 * gain)
    total = reward
    while True:
        _, reward, terminated, truncated, info = env.step(RIGHT)
        total += reward
        if terminated or truncated:
            break
    episode = info["episode"]
    assert episode.restart and episode.start_x == saved_x
    assert episode.episode_return == pytest.approx(total)
    # and gym-super-mario-bros' own x reward is resynced (stale, it would stay 0)
    raw = make_env(EnvConfig(reward_mode="raw", reward={"no_progress_cut_steps": 0}))
    raw.reset(seed=0)
    _, info = raw.reset(options={"restore": saved})
    _, reward, *_ = raw.step(RIGHT)
    assert reward > 0
    env.close()
    raw.close()


def test_the_same_actions_after_a_restore_give_the_same_trajectory() -> None:
    env = make_env(EnvConfig(reward={"no_progress_cut_steps": 0}))
    env.reset(seed=0)
    for _ in range(20):
        env.step(RIGHT)
    saved = env.unwrapped.dump_state()
    actions = [RIGHT_A if i % 6 < 3 else RIGHT for i in range(40)]

    def play() -> list[tuple[int, float, bytes]]:
        steps = []
        for action in actions:
            obs, reward, terminated, truncated, info = env.step(action)
            steps.append((info["x_pos"], round(reward, 6), obs.tobytes()))
            if terminated or truncated:
                break
        return steps

    original = play()  # straight on from the moment of the snapshot
    env.reset(options={"restore": saved})
    first = play()
    env.reset(options={"restore": saved})
    assert play() == first  # x, reward and observation, step for step
    # the original's first stacks held older frames; x and reward are the same
    assert [step[:2] for step in first] == [step[:2] for step in original]
    env.close()


def test_restarts_aim_a_run_up_before_recent_deaths_and_stay_bounded() -> None:
    cfg = EnvConfig(restarts={"share": 0.9, "max_states": 5}, reward={"no_progress_cut_steps": 20})
    env = make_env(cfg)
    wrapper = restarts_of(env)
    env.reset(seed=0)
    first, episode = walk_right_episode(env)  # walking right, a Goomba ends it at ~296
    assert not first["restart"] and not episode.restart and episode.start_x == START_X
    death_bucket = episode.max_x_pos // cfg.restarts.bucket_px
    starts = []
    for _ in range(6):
        first, episode = walk_right_episode(env)
        assert first["restart"] == episode.restart
        starts.append(episode.start_x if episode.restart else None)
        assert len(wrapper.archive) <= 5
    restarted = [x for x in starts if x is not None]
    assert restarted, starts
    for x in restarted:
        assert x > START_X and x // cfg.restarts.bucket_px <= death_bucket - 3
    env.close()


def test_a_run_up_range_spreads_restarts_over_the_approach() -> None:
    cfg = EnvConfig(
        restarts={
            "share": 0.9,
            "runup_buckets": 2,
            "runup_max_buckets": 7,
            "states_per_bucket": 4,
        },
        reward={"no_progress_cut_steps": 20},
    )
    env = make_env(cfg)
    wrapper = restarts_of(env)
    env.reset(seed=0)
    _, episode = walk_right_episode(env)
    death_bucket = episode.max_x_pos // cfg.restarts.bucket_px
    rng = np.random.default_rng(0)
    assert {wrapper.archive.draw_runup(rng) for _ in range(200)} == set(range(2, 8))
    gaps = set()
    for _ in range(20):
        _, episode = walk_right_episode(env)
        if episode.restart:
            gaps.add(death_bucket - episode.start_x // cfg.restarts.bucket_px)
    assert gaps and all(2 <= gap <= 7 for gap in gaps), gaps
    assert len(gaps) >= 2, gaps  # not one fixed distance
    env.close()


def test_greedy_probes_keep_their_path_and_restarts_start_on_it_before_the_death() -> None:
    cfg = EnvConfig(
        restarts={
            "share": 0.5,
            "greedy_share": 0.5,
            "greedy_restarts": 1.0,
            "runup_buckets": 1,
            "runup_max_buckets": 4,
        },
        reward={"no_progress_cut_steps": 40},
    )
    env = make_env(cfg)
    wrapper = restarts_of(env)
    env.reset(seed=1)
    px = cfg.restarts.bucket_px
    probes, restarts = [], []
    for _ in range(16):
        first, episode = walk_right_episode(env)  # the Goomba at ~296 ends every one
        assert bool(first.get("greedy")) == episode.greedy
        assert not (episode.greedy and episode.restart)  # a probe plays from the start
        (probes if episode.greedy else restarts if episode.restart else []).append(episode)
    assert probes and restarts, (probes, restarts)
    assert all(p.start_x == START_X for p in probes)
    end, path = wrapper.greedy_paths[("1-1", 1, 1)]
    assert end == max(p.max_x_pos for p in probes) // px
    # only the longest run-up's worth of states before the death is kept
    assert sorted(path) == list(range(end - 4, end + 1))
    # every restart came from the probe's path, 1..4 buckets before its death
    assert all(1 <= end - r.start_x // px <= 4 for r in restarts), restarts
    assert len({r.start_x for r in restarts}) >= 2  # the run-up is drawn, not fixed
    env.close()


def test_greedy_probes_need_restarts_on() -> None:
    env = make_env(EnvConfig(restarts={"share": 0.0, "greedy_share": 0.5}))
    for _ in range(6):
        _, info = env.reset()
        assert "greedy" not in info
    env.close()


def test_restart_share_anneals_as_stage_start_episodes_clear() -> None:
    env = make_env(EnvConfig(restarts={"share": 0.5}))
    wrapper = restarts_of(env)
    assert wrapper.restart_probability("1-1") == pytest.approx(0.5)
    wrapper._clears["1-1"] = deque([True, False] * (ANNEAL_EPISODES // 2))
    assert wrapper.restart_probability("1-1") == pytest.approx(0.25)
    wrapper._clears["1-1"] = deque([True] * ANNEAL_EPISODES)
    assert wrapper.restart_probability("1-1") == 0.0
    off_env = make_env(EnvConfig(restarts={"share": 0.0}))
    assert not restarts_of(off_env).enabled
    env.close()
    off_env.close()


def test_restarts_happen_inside_worker_processes() -> None:
    cfg = EnvConfig(restarts={"share": 0.9}, reward={"no_progress_cut_steps": 20})
    episodes = []
    with VectorEnv(cfg, n_envs=1, seed=0, mode="process") as venv:
        venv.reset()
        for _ in range(400):
            *_, infos = venv.step(np.array([RIGHT]))
            if "episode" in infos[0]:
                episodes.append(infos[0]["episode"])
            if len(episodes) >= 4:
                break
    assert not episodes[0].restart
    assert any(e.restart and e.start_x > START_X for e in episodes[1:]), episodes


# ------------------------------------------------------- trainer metrics
def episode(x: int, cleared: bool = False, restart: bool = False, ret: float = 1.0) -> Episode:
    start_x = 300 if restart else START_X
    return Episode(ret, 10, x, cleared, "1-1", restart, start_x)


def test_rollout_metrics_best_and_hints_come_from_stage_start_episodes_only() -> None:
    window = [episode(300, ret=2.0)] * 3 + [episode(3000, True, True, ret=50.0)] * 7
    # An older checkpoint's episode record: a dict without the restart fields.
    old_record = {"return": 1.0, "length": 10, "max_x_pos": 500, "cleared": False, "stage": "1-1"}
    old = Episode.from_record(old_record)
    metrics = rollout_metrics([*window, old], restarts=True)
    assert metrics["rollout/avg_max_x_pos"] == pytest.approx((3 * 300 + 500) / 4)
    assert metrics["rollout/ep_rew_mean"] == pytest.approx(7 / 4)
    assert metrics["rollout/clear_rate"] == 0.0
    assert metrics["rollout/restart_share"] == pytest.approx(7 / 11)
    assert metrics["rollout/frontier_x"] == 3000
    only_restarts = rollout_metrics([episode(900, True, True)], restarts=True)
    assert set(only_restarts) == {"rollout/restart_share", "rollout/frontier_x"}
    assert "rollout/restart_share" not in rollout_metrics(window, restarts=False)
    # greedy probes: out of the stage-start means, their own clear rate and max x
    probe = Episode(9.0, 10, 3200, True, "1-1", start_x=START_X, greedy=True)
    probes = [probe, Episode(1.0, 10, 1130, False, "1-1", start_x=START_X, greedy=True)]
    with_probes = rollout_metrics([*window, *probes], restarts=True)
    assert with_probes["rollout/clear_rate"] == 0.0
    assert with_probes["rollout/avg_max_x_pos"] == pytest.approx(300)
    assert with_probes["rollout/restart_share"] == pytest.approx(7 / 12)
    assert with_probes["rollout/greedy_clear_rate"] == pytest.approx(0.5)
    assert with_probes["rollout/greedy_max_x_pos"] == pytest.approx((3200 + 1130) / 2)
    assert "rollout/greedy_clear_rate" not in metrics

    # best.pt by the training episodes: judged on 20 stage-start episodes, never on restarts
    class Checkpoints:
        def __init__(self) -> None:
            self.scores: list[float] = []

        def save_best(self, payload: dict, score: float) -> bool:
            self.scores.append(score)
            return False

    trainer = Trainer(MarioConfig.model_validate({"train": {"best_by": "rollout"}}))
    trainer.checkpoints = Checkpoints()
    trainer._payload = lambda with_optimiser=True: {}
    trainer.episodes.extend([episode(3000, True, True)] * 60 + [episode(300)] * 19)
    trainer._maybe_save_best(trainer._rollout_metrics())
    assert trainer.checkpoints.scores == []
    trainer.episodes.append(episode(400))
    trainer._maybe_save_best(trainer._rollout_metrics())
    assert trainer.checkpoints.scores == [pytest.approx((19 * 300 + 400) / 20)]

    # hints see stage-start episodes only
    trainer.hints.observe(EpisodeEnd(1, 0, 50.0, 10, 3000, True, "1-1", restart=True))
    trainer.hints.observe(EpisodeEnd(2, 0, 1.0, 10, 300, False, "1-1"))
    trainer.hints.observe(EpisodeEnd(3, 0, 9.0, 10, 3200, True, "1-1", greedy=True))
    assert [e.max_x_pos for e in trainer.hints.history.episodes] == [300]
    assert EpisodeEnd.of(3, 0, probe).episode == probe


# ---------------------------------------------- tiny runs: eval and resume
@pytest.fixture(scope="module")
def run_with_restarts(tmp_path_factory: pytest.TempPathFactory) -> tuple[MarioConfig, Path]:
    artifacts = tmp_path_factory.mktemp("restarts") / "artifacts"
    cfg = load_config(
        cli_overrides={
            "env": {
                "n_envs": 2,
                "reward": {"no_progress_cut_steps": 8},
                # fine buckets, no run-up: a random policy's short episodes restart too
                "restarts": {"share": 0.9, "bucket_px": 8, "runup_buckets": 0},
            },
            "algo": {"n_steps": 32, "batch_size": 32, "n_epochs": 1},
            "train": {"total_timesteps": 256, "artifacts_dir": str(artifacts), "run_name": "r"},
        },
        environ={},
    )
    finished = Trainer(cfg).train()
    assert finished.status == "finished"
    return cfg, Path(finished.checkpoint)


def test_a_run_with_restarts_tags_its_episodes(run_with_restarts) -> None:
    _, final = run_with_restarts
    records = [json.loads(line) for line in (final.parent.parent / "metrics.jsonl").open()]
    episodes = [r for r in records if r["type"] == "EpisodeEnd"]
    assert episodes and all("restart" in r for r in episodes)
    assert any(r["restart"] for r in episodes) and not all(r["restart"] for r in episodes)
    iterations = [r for r in records if r["type"] == "IterationStats"]
    assert iterations[-1]["metrics"]["rollout/restart_share"] > 0


def test_eval_starts_at_the_stage_start_whatever_the_restart_settings(run_with_restarts) -> None:
    _, final = run_with_restarts
    agent = load_agent(final, {"reward": {"no_progress_cut_steps": 20}})
    assert agent.cfg.env.restarts.share == 0.0
    env = make_env(agent.cfg.env)
    env.reset(seed=0)
    for _ in range(4):  # walking right dies at the same Goomba: a restart would aim there
        first, episode = walk_right_episode(env)
        assert first["x_pos"] == START_X and not first["restart"] and not episode.restart
    env.close()


def test_resume_of_a_run_with_restarts_rebuilds_the_archive(run_with_restarts) -> None:
    cfg, final = run_with_restarts
    cfg = cfg.model_copy(deep=True)
    cfg.train.total_timesteps = 640
    events: list[Event] = []
    finished = Trainer(cfg, [events.append], resume_from=final).train()
    assert finished.status == "finished" and finished.step == 640
    steps = [e.step for e in events if isinstance(e, IterationStats)]
    assert steps == list(range(320, 641, 64))
    # the archive is not in the checkpoint: the workers rebuilt it, and restarted again
    assert any(isinstance(e, EpisodeEnd) and e.restart for e in events)
