"""``mario bench learn`` and ``learn-report``: real tiny runs, eval points judged afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mario_cli.config import load_config
from mario_cli.errors import ConfigError
from mario_cli.eval_protocol import START_PROTOCOL
from mario_cli.learnbench import (
    Amount,
    BenchSettings,
    EvalPoints,
    make_budget,
    median_over_seeds,
    milestones,
    parse_amount,
    train_seed,
)
from mario_cli.training.checkpoint import load_checkpoint
from mario_cli.training.trainer import TrainingControl
from tests.conftest import run_mario

TINY = (
    "--n-envs",
    "2",
    "--n-steps",
    "64",
    "--batch-size",
    "64",
    "--n-epochs",
    "1",
    "--reward-no-progress-cut-steps",
    "20",
)
POINT_KEYS = {"steps", "minutes", "checkpoint", "greedy", "stochastic", "best"}
POLICY_KEYS = {"clear_rate", "avg_max_x_pos", "avg_reward"}
MILESTONE_NAMES = {"first_clear", "clear_50", "clear_80"}


def test_amounts_are_minutes_or_steps() -> None:
    assert parse_amount("5m") == Amount("minutes", 5.0)
    assert parse_amount("2.5min") == Amount("minutes", 2.5)
    assert parse_amount("50000") == Amount("steps", 50000.0)
    assert parse_amount("50k") == Amount("steps", 50000.0)
    for bad in ("", "five", "-3m", "0", "5h"):
        with pytest.raises(ConfigError, match="--eval-every"):
            parse_amount(bad)
    assert make_budget(30, None) == Amount("minutes", 30.0)
    assert make_budget(None, 1000) == Amount("steps", 1000.0)
    with pytest.raises(ConfigError, match="one budget"):
        make_budget(30, 1000)
    with pytest.raises(ConfigError, match="one budget"):
        make_budget(None, None)


def test_eval_points_follow_the_schedule_and_stop_at_the_budget() -> None:
    points = EvalPoints(Amount("minutes", 10), Amount("steps", 1000), total_timesteps=10**9)
    assert points.due(512, 1.0) == (False, False)
    assert points.due(1024, 2.0) == (True, False)
    points.taken = 1
    assert points.due(1536, 3.0) == (False, False)
    assert points.due(2048, 4.0) == (True, False)
    assert points.due(2100, 10.0) == (True, True)  # the budget always takes a last point
    capped = EvalPoints(Amount("steps", 10**6), Amount("steps", 10**5), total_timesteps=4096)
    assert capped.due(4096, 1.0) == (True, True)  # total_timesteps ends training first


def _point(minutes: float, steps: int, greedy: float, stochastic: float) -> dict:
    return {
        "minutes": minutes,
        "steps": steps,
        "greedy": {"clear_rate": greedy, "avg_max_x_pos": 100 * minutes, "avg_reward": 1.0},
        "stochastic": {"clear_rate": stochastic, "avg_max_x_pos": 90.0, "avg_reward": 2.0},
    }


def test_milestones_and_medians_count_not_reached_as_late() -> None:
    fast = [_point(5, 1000, 0.0, 0.1), _point(10, 2000, 0.5, 0.85), _point(15, 3000, 0.9, 0.9)]
    slow = [_point(5, 900, 0.0, 0.0), _point(10, 1800, 0.05, 0.5), _point(15, 2700, 0.2, 0.6)]
    found = milestones(fast, ["greedy", "stochastic"])
    assert found["greedy"]["first_clear"] == {"minutes": 10, "steps": 2000}
    assert found["greedy"]["clear_50"] == {"minutes": 10, "steps": 2000}
    assert found["greedy"]["clear_80"] == {"minutes": 15, "steps": 3000}
    assert found["stochastic"]["first_clear"] == {"minutes": 5, "steps": 1000}
    late = milestones(slow, ["greedy"])
    assert late["greedy"]["clear_50"] is None and late["greedy"]["clear_80"] is None
    seeds = [
        {"points": fast, "milestones": found},
        {"points": slow, "milestones": milestones(slow, ["greedy", "stochastic"])},
        {"points": fast[:2], "milestones": milestones(fast[:2], ["greedy", "stochastic"])},
    ]
    median = median_over_seeds(seeds, ["greedy", "stochastic"])
    assert [p["seeds"] for p in median["points"]] == [3, 3, 2]
    assert median["points"][1]["steps"] == 2000
    assert median["points"][1]["greedy"]["clear_rate"] == 0.5
    assert median["points"][2]["greedy"]["clear_rate"] == pytest.approx(0.55)
    # first clear: 10, 10, 10 minutes; >=80%: 15, never, never -> not reached
    assert median["milestones"]["greedy"]["first_clear"] == {"minutes": 10, "steps": 2000}
    assert median["milestones"]["greedy"]["clear_80"] is None
    assert median["milestones"]["stochastic"]["clear_50"] == {"minutes": 10, "steps": 2000}


@pytest.mark.slow
def test_bench_learn_json_has_every_field_and_writes_the_plot(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text("[train]\nbest_noop_max = 1\n")
    result = run_mario(
        "bench",
        "learn",
        "--steps",
        "256",
        "--eval-every",
        "128",
        "--eval-episodes",
        "2",
        "--eval-max-steps",
        "50",
        "--seeds",
        "2",
        "--seed",
        "7",
        "--stage",
        "1-1",
        "--name",
        "tiny",
        "--json",
        "-c",
        "tiny.toml",
        *TINY,
        env={"MARIO_TRAIN__BEST_CHECK_EVERY": "128"},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["name"] == "tiny" and data["env_id"] == "SuperMarioBros-1-1-v0"
    assert data["budget"] == {"steps": 256.0} and data["eval_every"] == {"steps": 128.0}
    assert data["eval"]["episodes"] == 2 and data["eval"]["policy"] == "both"
    assert data["eval"]["start"]["noop_max"] == 30 and data["eval"]["after_training"] is True
    assert data["variant"]["algo"]["n_steps"] == "64"  # the flags as typed
    # the -c file's and the MARIO_* variable's settings are part of the variant too
    assert data["variant"]["train"] == {"best_noop_max": 1, "best_check_every": "128", "seed": "7"}
    assert data["config"]["algo"]["n_steps"] == 64
    assert data["machine"]["cpu_count"] >= 1 and len(data["machine"]["loadavg_start"]) == 3
    assert data["interrupted"] is False
    assert [s["seed"] for s in data["seeds"]] == [7, 8]
    for seed in data["seeds"]:
        assert seed["status"] == "complete" and seed["steps"] == 256
        assert seed["steps_per_second"] > 0
        assert [p["steps"] for p in seed["points"]] == [128, 256]
        for point in seed["points"]:
            assert set(point) == POINT_KEYS
            assert Path(point["checkpoint"]).is_file()
            for policy in ("greedy", "stochastic"):
                assert set(point[policy]) == POLICY_KEYS
                assert 0.0 <= point[policy]["clear_rate"] <= 1.0
                assert point[policy]["avg_max_x_pos"] > 0
            # best: what `mario eval` of the run would play then, a copy of best.pt
            best = point["best"]
            assert set(best) == POLICY_KEYS | {"step", "checkpoint"}
            assert best["step"] in (128, 256) and best["step"] <= point["steps"]
            copy = load_checkpoint(Path(best["checkpoint"]))
            assert copy["best_by"] == "greedy" and copy["global_step"] == best["step"]
            assert Path(best["checkpoint"]).name == f"best_at_{point['steps']:012d}.pt"
        assert seed["points"][0]["minutes"] <= seed["points"][1]["minutes"]
        for policy in ("greedy", "stochastic", "best"):
            assert set(seed["milestones"][policy]) == MILESTONE_NAMES
            for name in MILESTONE_NAMES:
                hit = seed["milestones"][policy][name]
                assert hit is None or set(hit) == {"minutes", "steps"}
        run = Path(seed["run_dir"])  # a normal run folder: plot, runs, monitor work on it
        assert run.name == f"tiny-seed{seed['seed']}"
        assert (run / "metrics.jsonl").is_file() and (run / "config.toml").is_file()
        assert list((run / "tb").glob("events.out.tfevents.*"))
    assert [p["seeds"] for p in data["median"]["points"]] == [2, 2]
    for policy in ("greedy", "stochastic", "best"):
        assert set(data["median"]["milestones"][policy]) == MILESTONE_NAMES
    assert set(data["median"]["points"][0]) >= {"greedy", "stochastic", "best"}
    plot = Path(data["plot"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    saved = json.loads((tmp_path / "artifacts" / "bench" / "tiny" / "result.json").read_text())
    assert saved["seeds"] == data["seeds"]

    runs = run_mario("runs", "--json")
    assert {"tiny-seed7", "tiny-seed8"} <= {r["name"] for r in json.loads(runs.stdout)}

    wide = {"COLUMNS": "200"}
    table = run_mario("bench", "learn-report", "tiny", "tiny", "--output", "cmp.png", env=wide)
    assert table.returncode == 0, table.stderr
    assert "tiny" in table.stdout and "--n-steps 64" in table.stdout
    assert "--best-noop-max 1" in table.stdout and "(defaults)" not in table.stdout
    assert "- not reached" in table.stdout and "(medians over seeds)" in table.stdout
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(run_mario("bench", "learn-report", "tiny", "--json").stdout)
    (row,) = report["rows"]
    assert row["seeds"] == 2 and row["budget"] == {"steps": 256.0}
    last = data["median"]["points"][-1]
    assert row["final"]["greedy"]["clear_rate"] == last["greedy"]["clear_rate"]
    assert row["milestones"] == data["median"]["milestones"]

    again = run_mario("bench", "learn", "--steps", "256", "--name", "tiny", *TINY)
    assert again.returncode == 2 and "exists; pick another --name" in again.stderr

    # learn-eval: the same snapshots played again, without training
    same = json.loads(run_mario("bench", "learn-eval", "tiny", "--json").stdout)
    assert same["name"] == "tiny-eval" and same["evaluated_again"]["from"] == "tiny"
    assert same["seeds"] == data["seeds"]  # evaluation is reproducible
    assert same["machine"] == data["machine"]  # the load while it trained
    other = run_mario(
        "bench", "learn-eval", "tiny", "--name", "tiny-3", "--eval-episodes", "3",
        "--policy", "greedy", "--noop-max", "0", "--json",
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    redone = json.loads(other.stdout)
    assert redone["evaluated_again"]["earlier_eval"] == data["eval"]
    assert redone["eval"]["episodes"] == 3 and redone["eval"]["policy"] == "greedy"
    assert redone["eval"]["start"] == {
        "protocol": START_PROTOCOL, "noop_max": 0, "seed": 0, "no_progress_cut": False
    }  # fmt: skip
    for before, after in zip(data["seeds"], redone["seeds"], strict=True):
        assert (after["run"], after["steps"], after["minutes"]) == (
            before["run"], before["steps"], before["minutes"],
        )  # fmt: skip
        for old, new in zip(before["points"], after["points"], strict=True):
            assert set(new) == {"steps", "minutes", "checkpoint", "greedy", "best"}
            assert (new["steps"], new["checkpoint"]) == (old["steps"], old["checkpoint"])
            assert new["best"]["step"] == old["best"]["step"]
            assert new["best"]["checkpoint"] == old["best"]["checkpoint"]
            assert set(new["greedy"]) == POLICY_KEYS
    assert Path(redone["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = run_mario("bench", "learn-eval", "tiny", "--name", "tiny-4", env=wide)
    assert table.returncode == 0, table.stderr
    assert "evaluated again from tiny (which played 2 episodes" in table.stdout
    zero = run_mario("bench", "learn-eval", "tiny", "--name", "tiny-0", "--eval-episodes", "0")
    assert zero.returncode == 2 and "--eval-episodes and --eval-max-steps must be at least 1" in (
        zero.stderr
    )
    taken = run_mario("bench", "learn-eval", "tiny", "--name", "tiny-3")
    assert taken.returncode == 2 and "exists; pick another --name" in taken.stderr
    Path(data["seeds"][1]["points"][0]["best"]["checkpoint"]).unlink()
    gone = run_mario("bench", "learn-eval", "tiny", "--name", "tiny-5")
    assert gone.returncode != 0 and "1 snapshot(s) of tiny are gone" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1 and "Traceback" not in gone.stderr
    edited = json.loads(json.dumps(data))
    del edited["seeds"][0]["points"][1]["checkpoint"]  # a hand-edited result.json
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    bad = run_mario("bench", "learn-eval", "edited.json", "--name", "tiny-6")
    assert bad.returncode != 0 and "not a complete bench-learn result" in bad.stderr
    assert "'checkpoint'" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_an_interrupted_seed_keeps_its_eval_points(tmp_path: Path) -> None:
    cfg = load_config(
        cli_overrides={
            "env": {"n_envs": 2, "reward": {"no_progress_cut_steps": 20}},
            "algo": {"n_steps": 32, "batch_size": 64, "n_epochs": 1},
        },
        environ={},
    )
    settings = BenchSettings(
        name="cut",
        budget=Amount("steps", 10_000),
        eval_every=Amount("steps", 64),
        seeds=[0],
        eval_episodes=1,
        policy="greedy",
        noop_max=30,
        eval_max_steps=100,
        workers=1,
        artifacts=tmp_path / "artifacts",
    )
    control = TrainingControl()

    def stop_after_two(steps: int, minutes: float, metrics: dict) -> None:
        if steps >= 128:
            control.request_stop("Ctrl-C received")

    training = train_seed(cfg, settings, 0, control, [], stop_after_two)
    assert training.status == "interrupted"
    assert [p["steps"] for p in training.points] == [64, 128]
    assert all(Path(p["checkpoint"]).is_file() for p in training.points)
    # The run itself was saved as an interrupted, resumable run.
    assert list((Path(training.run_dir) / "checkpoints").glob("ckpt_*.pt"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["bench", "learn"], "give one budget"),
        (["bench", "learn", "--minutes", "1", "--steps", "5"], "give one budget"),
        (["bench", "learn", "--steps", "64", "--eval-every", "soon"], "--eval-every 'soon'"),
        (["bench", "learn", "--steps", "64", "--policy", "best"], "--policy 'best'"),
        (["bench", "learn", "--steps", "64", "--stage", "9-9"], "9-9"),
        (["bench", "learn", "--steps", "64", "--n-epochs", "0"], "n_epochs"),
        (["bench", "learn-report", "nothing-here"], "no bench-learn result 'nothing-here'"),
    ],
)
def test_bad_input_is_one_line(args: list[str], expected: str) -> None:
    result = run_mario(*args)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_settings_refuse_bad_names() -> None:
    settings = BenchSettings(
        "a b", Amount("steps", 1), Amount("steps", 1), [0], 1, "greedy", 0, 1, 1, Path(".")
    )
    with pytest.raises(ConfigError, match="--name 'a b'"):
        settings.check()
