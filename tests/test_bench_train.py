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
    assert set(data["breakdown"]) == {"env_wait", "inference", "update", "logging"}
    assert data["steps"] == 128
    assert data["sps"] == pytest.approx(data["steps"] / data["wall_seconds"], rel=0.01)
    assert data["ratio_to_ceiling"] == pytest.approx(
        data["sps"] / data["env_ceiling_sps"], abs=1e-3
    )
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
    # CPU busy counts this process and the env workers over the measured iterations
    assert 0 < data["cpu_busy"] <= 1.05
    # nothing is left behind by a benchmark
    assert not (tmp_path / "artifacts").exists()
