"""``mario bench train --json``: every field, and a breakdown that adds up to the wall time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_mario


def test_bench_train_fields_and_breakdown(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text("[env]\nn_envs = 2\n[algo]\nn_steps = 32\nbatch_size = 32\nn_epochs = 1\n")
    result = run_mario("bench", "train", "--steps", "128", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"sps", "env_ceiling_sps", "ratio_to_ceiling", "breakdown"} <= set(data)
    phases = {"env_wait", "inference", "storing", "update", "repair", "best", "logging"}
    assert set(data["breakdown"]) == phases
    assert data["steps"] == 128
    assert data["sps"] == pytest.approx(data["steps"] / data["wall_seconds"], rel=0.01)
    assert data["ratio_to_ceiling"] == pytest.approx(
        data["sps"] / data["env_ceiling_sps"], abs=1e-3
    )
    # one round: its own ceiling, measured beside it, is the ceiling
    assert data["ratio_to_ceiling_rounds"] == [pytest.approx(data["ratio_to_ceiling"], abs=1e-3)]
    assert data["env_ceiling_sps_rounds"] == [pytest.approx(data["env_ceiling_sps"], abs=0.01)]
    # what the cores gave bare emulators all at once, beside cores x one alone
    parallel = data["env_parallel_ceiling_sps"]
    assert parallel > 0 and data["env_parallel_ceiling_sps_rounds"] == [pytest.approx(parallel)]
    assert data["host_scaling"] == pytest.approx(
        parallel * data["cpu_count"] / data["env_ceiling_sps"], abs=1e-3
    )
    assert 0 < data["host_scaling"] <= data["cpu_count"] * 1.3
    assert data["ratio_to_parallel_ceiling"] == pytest.approx(data["sps"] / parallel, abs=1e-3)
    total = sum(data["breakdown"].values())
    assert total == pytest.approx(data["wall_seconds"], rel=0.10)
    assert data["breakdown"]["env_wait"] > 0 and data["breakdown"]["update"] > 0
    # the per-sample costs, each measured on its own, and the limit they imply
    costs = data["costs_ms"]
    assert set(costs) == {"emulator_per_step", "inference_per_step", "learner_per_sample"}
    assert all(value > 0 for value in costs.values())
    assert data["limit_sps"] == pytest.approx(
        data["cpu_count"] * 1000 / sum(costs.values()), rel=0.01
    )
    assert 0 < data["ratio_to_limit"] <= 1.2
    assert data["ratio_to_limit"] == pytest.approx(data["sps"] / data["limit_sps"], abs=1e-3)
    # one round: its own costs, measured just before it, are the costs
    assert data["limit_sps_rounds"] == [pytest.approx(data["limit_sps"], abs=0.01)]
    assert data["ratio_to_limit_rounds"] == [pytest.approx(data["ratio_to_limit"], abs=1e-3)]
    # CPU busy counts this process and the env workers over the measured iterations
    assert 0 < data["cpu_busy"] <= 1.05
    # and where those cores' time went, per agent step: the parts add up to the whole
    in_run = data["in_run_cpu_ms"]
    parts = {
        "workers_per_step",
        "trainer_collect_per_step",
        "trainer_update_per_step",
        "trainer_other_per_step",
        "idle_per_step",
    }
    assert set(in_run) == parts | {"total_per_step"}
    assert sum(in_run[part] for part in parts) == pytest.approx(in_run["total_per_step"], abs=0.01)
    assert in_run["workers_per_step"] > 0 and in_run["trainer_update_per_step"] > 0
    assert in_run["trainer_collect_per_step"] > 0
    busy_share = 1 - in_run["idle_per_step"] / in_run["total_per_step"]
    assert busy_share == pytest.approx(data["cpu_busy"], abs=0.01)
    # nothing is left behind by a benchmark
    assert not (tmp_path / "artifacts").exists()


def test_same_settings_config_is_sb3_classic_ppo_on_the_same_envs() -> None:
    from mario_cli.baselines.sb3_ppo import CLASSIC, SB3_PPO_DEFAULTS, same_settings_config
    from mario_cli.config import MarioConfig

    cfg = MarioConfig()
    cfg.env.n_envs = 6
    cfg.env.jump_press = True
    cfg.algo.n_epochs = 3
    same = same_settings_config(cfg)
    MarioConfig.model_validate(same.to_dict())  # a config mario accepts as it is
    for key, value in {**CLASSIC, **SB3_PPO_DEFAULTS}.items():
        assert getattr(same.algo, key) == value, key
    assert same.algo.lr_schedule == "constant" and same.algo.warmup_fraction == 0.0
    assert same.env.n_envs == 6 and same.env.reward_mode == "raw"
    assert same.env.jump_press is False and same.env.reward.no_progress_cut_steps == 0
    assert same.model.backbone == "nature" and same.train.amp is False
    # none of mario's training aids: restarts, greedy probes, entropy decay, repair
    assert same.env.restarts.share == 0.0 and same.algo.ent_coef_final is None
    assert same.repair.repair_every == 0
    assert cfg.algo.n_epochs == 3  # the caller's config is left as it was


def test_same_settings_needs_vs_sb3() -> None:
    result = run_mario("bench", "train", "--same-settings")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --same-settings compares with SB3: add --vs-sb3"
    ]


def test_bench_train_against_sb3_like_for_like(tmp_path: Path) -> None:
    # One env: SB3 and mario at SB3's settings each collect one rollout of 512 steps.
    config = tmp_path / "tiny.toml"
    config.write_text("[env]\nn_envs = 1\n[algo]\nn_steps = 64\nbatch_size = 64\nn_epochs = 1\n")
    result = run_mario(
        "bench", "train", "--steps", "64", "--vs-sb3", "--same-settings", "--json",
        "--config", str(config),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["steps"] == 64 and data["sb3_steps"] == 512
    assert data["ratio_vs_sb3"] == pytest.approx(data["sps"] / data["sb3_sps"], abs=1e-3)
    assert data["ratio_vs_sb3_same_settings"] == pytest.approx(
        data["same_settings_sps"] / data["sb3_sps"], abs=1e-3
    )
    # SB3 is timed as mario is, from its first reset to its last update: its process
    # spawn and model build are outside the clock (SB3 runs in a process of its own)
    assert data["sb3_setup_seconds"] > 0
    assert data["sb3_sps"] == pytest.approx(data["sb3_steps"] / data["sb3_learn_seconds"], rel=0.01)
    # and its learning time split like mario's: collecting rollouts, then the update
    assert 0 < data["sb3_collect_seconds"] < data["sb3_learn_seconds"]
    assert data["sb3_update_seconds"] == pytest.approx(
        data["sb3_learn_seconds"] - data["sb3_collect_seconds"], abs=2e-3
    )
    assert data["sb3_update_seconds"] > 0
    assert set(data["same_settings_breakdown"]) == set(data["breakdown"])
    assert data["same_settings_breakdown"]["update"] > 0


def test_each_round_is_set_against_the_costs_measured_around_it(monkeypatch) -> None:
    """The host drifts from minute to minute: a round's ratio to the limit uses the
    costs measured beside it (the emulator's before and after it), and the whole run's
    limit is the rounds' mean, so its ratio lies between theirs."""
    from mario_cli import benchmark, costs
    from mario_cli.config import MarioConfig

    monkeypatch.setattr(benchmark.os, "cpu_count", lambda: 2)
    calls: list[str] = []
    # a slow host in round 1 (every cost 25% higher), a fast one in round 2
    measured = iter([costs.SampleCosts(5.0, 0.25, 1.25, 2), costs.SampleCosts(4.0, 0.2, 1.0, 2)])
    emulator_after = iter([5.5, 3.5])  # and the emulator's cost drifting during each round

    def sample_costs(cfg):
        calls.append("costs")
        return next(measured)

    def emulator(cfg, seed):
        calls.append("emulator")
        return next(emulator_after), (4, 84, 84), 7

    def ceiling(cfg):
        calls.append("ceiling")
        return 1000.0, 500.0

    monkeypatch.setattr(costs, "measure_sample_costs", sample_costs)
    monkeypatch.setattr(costs, "emulator_ms_per_step", emulator)
    monkeypatch.setattr(benchmark, "env_ceiling_sps", ceiling)
    monkeypatch.setattr(benchmark, "env_parallel_ceiling_sps", lambda cfg: 480.0)
    trained = iter([260.0, 350.0])

    def training(cfg, steps):
        calls.append("train")
        sps = next(trained)
        return {
            "sps": sps,
            "wall_seconds": steps / sps,
            "steps": steps,
            "cpu_busy": 0.97,
            "in_run_cpu_ms": None,
            "breakdown": {"env_wait": 1.0, "update": 0.5},
        }

    monkeypatch.setattr(benchmark, "bench_mario_training", training)
    result = benchmark.bench_train(MarioConfig(), 4096, rounds=2)
    # each round's training between its costs and ceilings before and after
    assert calls == ["costs", "ceiling", "train", "ceiling", "emulator"] * 2
    # round 1: emulator (5.0 + 5.5) / 2 = 5.25, total 6.75 ms: 2,000 / 6.75 = 296.3 steps/s;
    # round 2: (4.0 + 3.5) / 2 = 3.75, total 4.95 ms: 404.04 steps/s
    assert result["limit_sps_rounds"] == [296.3, 404.04]
    assert result["ratio_to_limit_rounds"] == [round(260 / 296.3, 3), round(350 / 404.04, 3)]
    assert result["costs_ms"] == {
        "emulator_per_step": 4.5,
        "inference_per_step": 0.225,
        "learner_per_sample": 1.125,
    }
    limit = (2000 / 6.75 + 2000 / 4.95) / 2
    assert result["limit_sps"] == round(limit, 2)
    assert result["ratio_to_limit"] == round(305 / limit, 3)
    low, high = sorted(result["ratio_to_limit_rounds"])
    assert low <= result["ratio_to_limit"] <= high


def test_cores_that_emulate_well_under_their_count_together_are_named() -> None:
    from mario_cli.benchmark import shared_cores

    assert shared_cores(1.2, 2)  # two hyperthreads of one core: ~1.2x, not 2x
    assert shared_cores(4.6, 8)  # 4 cores with 2 threads each
    assert not shared_cores(1.9, 2)  # two cores of their own, give or take the noise
    assert not shared_cores(1.0, 1)  # one core: nothing to share


def test_a_host_whose_speed_drifted_between_rounds_is_named() -> None:
    from mario_cli.benchmark import host_drift

    assert host_drift([410.9, 357.2, 466.0]) == (357.2, 466.0)  # 30% apart: say so
    assert host_drift([450.0, 470.0]) is None  # 4%: within one host's usual noise
    assert host_drift([450.0]) is None


def test_one_rollout_table_says_why_cpu_busy_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text("[env]\nn_envs = 2\n[algo]\nn_steps = 32\nbatch_size = 32\nn_epochs = 1\n")
    result = run_mario("bench", "train", "--steps", "64", "--config", str(config))
    assert result.returncode == 0, result.stderr
    busy_row = next(line for line in result.stdout.splitlines() if "CPU busy" in line)
    assert "n/a" in busy_row
    note = " ".join(result.stdout.split())
    assert "from the end of the first rollout (64 steps) on: use --steps 128 or more" in note
