"""``mario bench env --json`` measures the real emulator and reports every field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_mario

FIELDS = {
    "raw_fps",
    "single_env_sps",
    "vector_env_sps",
    "n_envs",
    "frame_skip",
    "efficiency",
    "scaling",
}


def test_bench_env_json_fields_are_consistent(tmp_path: Path) -> None:
    config = tmp_path / "mario.toml"
    config.write_text("[env]\nn_envs = 4\nstep_groups = 2\n")
    result = run_mario(
        "bench", "env", "--json", "--steps", "40", "--n-envs", "2", "--config", str(config)
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= FIELDS
    assert data["n_envs"] == 2 and data["frame_skip"] == 4
    assert data["raw_fps"] > 0 and data["single_env_sps"] > 0 and data["vector_env_sps"] > 0
    ceiling = data["raw_fps"] / data["frame_skip"]
    assert data["efficiency"] == pytest.approx(data["single_env_sps"] / ceiling, abs=2e-3)
    assert data["scaling"] == pytest.approx(
        data["vector_env_sps"] / data["single_env_sps"], abs=2e-3
    )
    assert data["rounds"] == 1 and data["scaling_rounds"] == [
        pytest.approx(data["scaling"], abs=2e-3)
    ]
    # the host's own parallel scaling: as many bare emulators at once as there are workers
    assert data["raw_parallel_fps"] > 0
    assert data["host_scaling"] == pytest.approx(
        data["raw_parallel_fps"] / data["raw_fps"], abs=2e-3
    )
    # the configured envs, stepped in groups as training steps them
    assert data["pipelined_n_envs"] == 4 and data["pipelined_groups"] == 2
    assert data["pipelined_env_sps"] > 0
    assert data["pipelined_scaling"] == pytest.approx(
        data["pipelined_env_sps"] / data["single_env_sps"], abs=2e-3
    )
    assert data["pipelined_scaling_rounds"] == [pytest.approx(data["pipelined_scaling"], abs=2e-3)]
    # the same 2 envs, each worker stepping its own through a whole rollout on one command
    assert data["rollout_env_sps"] > 0
    assert data["rollout_scaling"] == pytest.approx(
        data["rollout_env_sps"] / data["single_env_sps"], abs=2e-3
    )
    assert data["rollout_scaling_rounds"] == [pytest.approx(data["rollout_scaling"], abs=2e-3)]
    # the lockstep scaling, split: workers x an env's speed beside the others x busy share
    assert data["lockstep_env_step_ms"] > 0
    assert data["lockstep_env_speed"] == pytest.approx(
        1000 / data["single_env_sps"] / data["lockstep_env_step_ms"], abs=2e-3
    )
    assert 0 < data["lockstep_busy"] <= 1
    assert data["n_workers"] * data["lockstep_env_speed"] * data["lockstep_busy"] == (
        pytest.approx(data["scaling"], rel=0.01)
    )


def test_bench_env_rounds_alternate_and_average() -> None:
    result = run_mario("bench", "env", "--json", "--steps", "24", "--rounds", "2")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["rounds"] == 2 and len(data["scaling_rounds"]) == 2
    assert len(data["host_scaling_rounds"]) == 2
    assert len(data["pipelined_scaling_rounds"]) == 2
    assert len(data["rollout_scaling_rounds"]) == 2
    assert all(value > 0 for value in data["scaling_rounds"])
    for scaling, speed, busy in zip(
        data["scaling_rounds"],
        data["lockstep_env_speed_rounds"],
        data["lockstep_busy_rounds"],
        strict=True,
    ):
        assert data["n_workers"] * speed * busy == pytest.approx(scaling, rel=0.01)
    # the figures are the rounds' means: the overall scaling, their ratio, is a weighted
    # mean of the rounds' scalings, so it lies between them
    low, high = min(data["scaling_rounds"]), max(data["scaling_rounds"])
    assert low - 2e-3 <= data["scaling"] <= high + 2e-3


def test_bench_env_bad_input_is_one_line() -> None:
    result = run_mario("bench", "env", "--steps", "0")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--steps" in result.stderr
    result = run_mario("bench", "env", "--env-id", "SuperMarioBros-0-0-v0", "--steps", "5")
    assert result.returncode == 2
    assert "unknown env id" in result.stderr and "Traceback" not in result.stderr


def _exit_without_reporting(*_args: object) -> None:
    import os

    os._exit(3)


def test_a_failed_or_dead_bare_emulator_probe_is_one_clear_error(monkeypatch) -> None:
    from mario_cli import benchmark
    from mario_cli.config import EnvConfig
    from mario_cli.errors import MarioError

    # an error inside a probe comes back as the probe's own message
    with pytest.raises(MarioError, match="bare-emulator process failed: ValueError"):
        benchmark.measure_raw_fps_parallel(EnvConfig(), frames=-1, processes=2)
    # a probe that dies without a word is named by its exit code, not waited for
    monkeypatch.setattr(benchmark, "_raw_fps_after", _exit_without_reporting)
    with pytest.raises(MarioError, match="exited with code 3 before reporting"):
        benchmark.measure_raw_fps_parallel(EnvConfig(), frames=100, processes=2)


def test_the_scalings_divide_by_one_env_measured_before_and_after_them(monkeypatch) -> None:
    """A host that speeds up during a round must not show as scaling: one env is
    measured before the N envs and after them, and each scaling divides by the mean."""
    from mario_cli import benchmark
    from mario_cli.config import EnvConfig

    calls: list[str] = []
    singles = iter([200.0, 300.0])  # the host sped up by half during the round

    def measured(name: str, value: object):
        def measure(*_args: object, **_kwargs: object) -> object:
            calls.append(name)
            return next(singles) if name == "one env" else value

        return measure

    monkeypatch.setattr(benchmark, "measure_single_env_sps", measured("one env", None))
    monkeypatch.setattr(benchmark, "measure_raw_fps", lambda cfg, frames: 1000.0)
    monkeypatch.setattr(benchmark, "measure_raw_fps_parallel", lambda cfg, frames, n: 1900.0)
    lockstep = benchmark.LockstepMeasure(sps=450.0, n_workers=2, env_step_ms=4.2, busy=0.945)
    monkeypatch.setattr(benchmark, "measure_vector_env_sps", measured("lockstep", lockstep))
    monkeypatch.setattr(benchmark, "measure_rollout_env_sps", measured("rollout", 500.0))
    monkeypatch.setattr(benchmark, "measure_pipelined_env_sps", measured("pipelined", 475.0))
    result = benchmark.bench_env(EnvConfig(), n_envs=2, steps=100)
    assert calls == ["one env", "lockstep", "rollout", "pipelined", "one env"]
    assert result.single_env_sps == 250.0
    assert result.scaling_rounds == [1.8] and result.scaling == 1.8
    assert result.rollout_scaling == 2.0 and result.pipelined_scaling == 1.9
    assert result.host_scaling == 1.9
    # one env alone took 1000 / 250 = 4.0 ms a step, 4.2 beside the other: 2 x 0.952 x 0.945
    assert result.lockstep_env_speed_rounds == [0.952] and result.lockstep_busy_rounds == [0.945]
    assert result.n_workers == 2
