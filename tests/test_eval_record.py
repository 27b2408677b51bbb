"""eval, record, plot and runs on a tiny model trained on the real emulator."""

from __future__ import annotations

import json
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from mario_cli.cli.eval import repeats_one_episode
from mario_cli.config import load_config
from mario_cli.envs import make_env
from mario_cli.errors import MarioError
from mario_cli.eval_protocol import START_PROTOCOL
from mario_cli.evaluation import evaluate, find_model, load_agent, play_episode
from mario_cli.training.trainer import Trainer
from tests.conftest import run_mario


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny runs under one artifacts folder; returns the folder."""
    artifacts = tmp_path_factory.mktemp("eval") / "artifacts"
    for name in ("tiny-a", "tiny-b"):
        cfg = load_config(
            cli_overrides={
                # Without jump press: under it an early agent's greedy action holds
                # right+A+B, which hops the same way whatever the no-op start.
                "env": {"n_envs": 2, "reward": {"no_progress_cut_steps": 3}, "jump_press": False},
                "algo": {"n_steps": 16, "batch_size": 32, "n_epochs": 1},
                "train": {
                    "total_timesteps": 128,
                    "artifacts_dir": str(artifacts),
                    "run_name": name,
                },
            },
            environ={},
        )
        Trainer(cfg).train()
    return artifacts


def test_eval_json_keys_and_consistency(trained: Path) -> None:
    result = run_mario(
        "eval", "tiny-a", "--episodes", "3", "--max-steps", "120", "--json",
        "--artifacts-dir", str(trained),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    keys = {"model", "episodes", "avg_reward", "avg_max_x_pos", "clear_rate", "avg_length"}
    assert keys | {"per_episode", "per_stage"} <= set(data)
    episodes = data["per_episode"]
    assert data["episodes"] == len(episodes) == 3
    assert data["avg_reward"] == pytest.approx(np.mean([e["return"] for e in episodes]))
    assert data["avg_max_x_pos"] == pytest.approx(np.mean([e["max_x_pos"] for e in episodes]))
    assert data["clear_rate"] == pytest.approx(np.mean([e["cleared"] for e in episodes]))
    assert data["avg_length"] == pytest.approx(np.mean([e["length"] for e in episodes]))
    assert data["model"].endswith("final.pt")


def _outcome(episode: dict) -> tuple:
    return (episode["length"], episode["max_x_pos"], episode["return"])


def test_ten_greedy_episodes_differ_and_a_seed_repeats_them(trained: Path) -> None:
    model = find_model("tiny-a", trained)
    first = evaluate(model, 10, "greedy", 120, seed=3, workers=2)
    again = evaluate(model, 10, "greedy", 120, seed=3, workers=1)
    assert first["per_episode"] == again["per_episode"]  # worker count and order don't matter
    outcomes = {_outcome(e) for e in first["per_episode"]}
    assert len(outcomes) > 1  # the no-op starts make greedy episodes differ
    waits = [e["noop_frames"] for e in first["per_episode"]]
    assert all(0 <= w <= 30 for w in waits) and len(set(waits)) == 10  # distinct starts
    assert [e["seed"] for e in first["per_episode"]] == list(range(3, 13))
    flat = evaluate(model, 10, "greedy", 120, seed=3, workers=2, noop_max=0)
    assert len({_outcome(e) for e in flat["per_episode"]}) == 1  # the deterministic NES
    assert first["start"] == {
        "protocol": START_PROTOCOL, "noop_max": 30, "seed": 3, "no_progress_cut": False
    }  # fmt: skip
    other = evaluate(model, 10, "greedy", 120, seed=50, workers=2)
    assert [e["noop_frames"] for e in other["per_episode"]] != waits


def test_stochastic_episodes_are_their_seeds_own_on_any_number_of_workers(trained: Path) -> None:
    model = find_model("tiny-a", trained)
    pooled = evaluate(model, 10, "stochastic", 120, seed=3, workers=2)["per_episode"]
    # Episodes of different lengths finish out of order in the pool; each must still
    # land in its own slot, and its sampling must depend on its seed only.
    assert len({e["length"] for e in pooled}) > 1
    assert [e["seed"] for e in pooled] == list(range(3, 13))
    alone = evaluate(model, 10, "stochastic", 120, seed=3, workers=1)["per_episode"]
    assert pooled == alone
    fewer = evaluate(model, 9, "stochastic", 120, seed=3, workers=1)["per_episode"]
    assert fewer == pooled[:9]  # episode i is the same however many are played


def test_greedy_eval_says_when_every_episode_was_the_same(trained: Path) -> None:
    args = (
        "eval",
        "tiny-a",
        "--episodes",
        "2",
        "--max-steps",
        "120",
        "--artifacts-dir",
        str(trained),
    )
    data = json.loads(run_mario(*args, "--json", "--noop-max", "0").stdout)
    first, second = data["per_episode"]
    assert _outcome(first) == _outcome(second)
    assert repeats_one_episode(data)
    table = run_mario(*args, "--noop-max", "0")
    assert table.returncode == 0, table.stderr
    assert "every greedy episode was the same" in table.stdout
    assert "after 0..30 no-op" not in table.stdout and "no no-op frames" in table.stdout
    stochastic = run_mario(*args, "--stochastic", "--noop-max", "0")
    assert "every greedy episode was the same" not in stochastic.stdout
    varied = {**data, "per_episode": [first, {**first, "length": first["length"] + 1}]}
    assert not repeats_one_episode(varied)
    assert not repeats_one_episode({**data, "per_episode": [first]})


def test_policy_both_reports_both_clear_rates(trained: Path) -> None:
    args = (
        "eval",
        "tiny-a",
        "--episodes",
        "3",
        "--max-steps",
        "120",
        "--artifacts-dir",
        str(trained),
    )
    data = json.loads(run_mario(*args, "--policy", "both", "--json").stdout)
    assert data["policy"] == "both"
    assert data["start"]["noop_max"] == 30 and "no-op" in data["start"]["protocol"]
    assert set(data["by_policy"]) == {"greedy", "stochastic"}
    episodes = data["per_episode"]
    assert [e["policy"] for e in episodes] == ["greedy"] * 3 + ["stochastic"] * 3
    # Episode i of both policies starts the same way.
    assert [e["noop_frames"] for e in episodes[:3]] == [e["noop_frames"] for e in episodes[3:]]
    for policy, summary in data["by_policy"].items():
        chosen = [e for e in episodes if e["policy"] == policy]
        assert summary["episodes"] == 3
        assert summary["clear_rate"] == pytest.approx(np.mean([e["cleared"] for e in chosen]))
        assert summary["avg_max_x_pos"] == pytest.approx(np.mean([e["max_x_pos"] for e in chosen]))
    assert "clear_rate" not in data  # two policies: no single top-level rate to misread
    table = run_mario(*args, "--policy", "both")
    assert table.returncode == 0, table.stderr
    assert "greedy, 3 episodes: clear rate" in table.stdout
    assert "stochastic, 3 episodes: clear rate" in table.stdout
    assert "from the stage start after 0..30 no-op frames" in table.stdout
    alias = json.loads(run_mario(*args, "--stochastic", "--json").stdout)
    assert alias["policy"] == "stochastic"
    assert alias["per_episode"] == episodes[3:]


def test_always_right_policy_max_x_is_what_the_emulator_reports(trained: Path) -> None:
    agent = load_agent(find_model("tiny-a", trained))
    agent.act = lambda obs, state, start, greedy: (1, 0.0, None)  # scripted: always right
    env = make_env(agent.cfg.env)
    xs: list[int] = []
    result = play_episode(agent, env, True, 500, 0, lambda s: xs.append(s["info"]["x_pos"]))
    assert result["max_x_pos"] == max(xs)
    assert 250 < result["max_x_pos"] < 400  # walking right dies at the first goomba
    assert result["cleared"] is False


def test_eval_plays_on_where_training_cut_an_episode_for_no_progress(trained: Path) -> None:
    agent = load_agent(find_model("tiny-a", trained))  # trained with a cut after 3 steps
    assert agent.cfg.env.settings_of("reward").no_progress_cut_steps == 0
    assert agent.cfg.env.settings_of("restarts").share == 0.0
    agent.act = lambda obs, state, start, greedy: (0, 0.0, None)  # scripted: stand still
    result = play_episode(agent, make_env(agent.cfg.env), True, 60, 0)
    assert result["length"] == 60 and result["max_x_pos"] < 60  # stood until the limit
    # a library caller may turn the cut back on: its episodes are cut, and it says so
    cut = {"reward": {"no_progress_cut_steps": 3}}
    model = find_model("tiny-a", trained)
    result = evaluate(model, 1, max_steps=60, noop_max=0, env_overrides=cut)
    assert result["start"]["no_progress_cut"] is True
    assert evaluate(model, 1, max_steps=60, noop_max=0)["start"]["no_progress_cut"] is False


def test_stages_fill_per_stage_entries(trained: Path) -> None:
    result = evaluate(
        find_model("tiny-a", trained), 1, max_steps=120, stages=["1-1", "1-2"], workers=2
    )
    assert result["by_policy"]["greedy"]["per_stage"] == result["per_stage"]
    assert set(result["per_stage"]) == {"1-1", "1-2"}
    assert [e["stage"] for e in result["per_episode"]] == ["1-1", "1-2"]
    for stage in ("1-1", "1-2"):
        assert result["per_stage"][stage]["episodes"] == 1


def test_record_writes_an_mp4_of_duration_times_fps_frames(trained: Path, tmp_path: Path) -> None:
    output = tmp_path / "clip.mp4"
    result = run_mario(
        "record",
        "tiny-a",
        "--duration",
        "2",
        "--fps",
        "15",
        "--scale",
        "2",
        "--overlay",
        "--output",
        str(output),
        "--artifacts-dir",
        str(trained),
    )
    assert result.returncode == 0, result.stderr
    reader = imageio_ffmpeg.read_frames(str(output))
    meta = next(reader)
    frames = sum(1 for _ in reader)
    assert meta["size"] == (512, 480)
    assert abs(frames - 30) <= 1
    assert not list(tmp_path.glob("*.partial.mp4"))


def test_record_falls_back_to_png_frames(trained: Path, tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from mario_cli import recording
    from mario_cli.cli import app

    def broken(*args, **kwargs):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(recording, "write_mp4", broken)
    output = tmp_path / "clip.mp4"
    result = CliRunner().invoke(
        app,
        [
            "record",
            "tiny-a",
            "--duration",
            "1",
            "--fps",
            "10",
            "--output",
            str(output),
            "--artifacts-dir",
            str(trained),
        ],
    )
    assert isinstance(result.exception, MarioError)
    message = str(result.exception)
    folder = tmp_path / "clip_frames"
    assert "encoder exploded" in message and str(folder) in message
    assert "ffmpeg -framerate 10" in message
    assert len(list(folder.glob("frame_*.png"))) == 10
    assert not output.exists()


def test_plot_writes_a_png_for_two_runs(trained: Path, tmp_path: Path) -> None:
    output = tmp_path / "compare.png"
    result = run_mario(
        "plot",
        "tiny-a",
        "tiny-b",
        "--metric",
        "rollout/avg_max_x_pos",
        "--x",
        "time",
        "--output",
        str(output),
        "--artifacts-dir",
        str(trained),
    )
    assert result.returncode == 0, result.stderr
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert output.stat().st_size > 10_000


def test_plot_draws_each_runs_own_values_of_each_chosen_metric(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mario_cli import plotting
    from mario_cli.runs import resolve_run

    drawn: list[tuple[str, dict[str, tuple[list[float], list[float]]]]] = []
    save = plotting.save_figure

    def record_then_save(fig, output, dpi=100):
        for ax in fig.axes:
            lines = {
                line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                for line in ax.lines
            }
            drawn.append((ax.get_title(), lines))
        return save(fig, output, dpi)

    monkeypatch.setattr(plotting, "save_figure", record_then_save)
    runs = [resolve_run(name, trained) for name in ("tiny-a", "tiny-b")]
    metrics = ["train/value_loss", "train/entropy_loss"]
    plotting.plot_runs(runs, metrics, "steps", tmp_path / "two.png", smoothing=0.6)
    assert [title for title, _ in drawn] == metrics
    for metric, lines in drawn:
        assert set(lines) == {"tiny-a", "tiny-b"}
        for run in runs:
            logged = [
                json.loads(line) for line in run.metrics.read_text().splitlines() if line.strip()
            ]
            points = [
                (r["step"], r["metrics"][metric]) for r in logged if r["type"] == "IterationStats"
            ]
            assert len(points) == 4
            xs, ys = lines[run.name]
            assert xs == [float(step) for step, _ in points]
            assert ys == pytest.approx(plotting.smooth([value for _, value in points], 0.6))


def test_runs_json_lists_steps_and_status(trained: Path) -> None:
    result = run_mario("runs", "--json", "--artifacts-dir", str(trained))
    assert result.returncode == 0, result.stderr
    runs = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(runs) == {"tiny-a", "tiny-b"}
    for run in runs.values():
        assert run["steps"] == 128 and run["total_timesteps"] == 128
        assert run["status"] == "finished" and run["algo"] == "ppo"
    one = run_mario("runs", "tiny-a", "--json", "--artifacts-dir", str(trained))
    detail = json.loads(one.stdout)
    assert "[algo]" in detail["config"]
    assert any(c["path"].endswith("final.pt") for c in detail["checkpoints"])


def test_runs_lists_a_damaged_run_next_to_good_ones(trained: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    (artifacts / "runs").mkdir(parents=True)
    for name in ("tiny-a", "tiny-b"):
        (artifacts / "runs" / name).symlink_to(trained / "runs" / name)
    damaged = artifacts / "runs" / "damaged"
    (damaged / "checkpoints").mkdir(parents=True)
    (damaged / "checkpoints" / "best.pt").write_bytes(b"junk")
    (damaged / "metrics.jsonl").write_bytes(
        b'{"type": "RunStarted", "run_name": "damaged"}\n'  # no algo, env or budget
        b"[1, 2]\n"
        b'{"type": "IterationStats", "step": 64, "metrics": {"rollout/avg_max_x_pos": 300.0}}\n'
        b"\xff\xfe not utf-8\n"
    )
    result = run_mario("runs", "--json", "--artifacts-dir", str(artifacts))
    assert result.returncode == 0, result.stderr
    runs = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(runs) == {"tiny-a", "tiny-b", "damaged"}
    assert runs["damaged"]["steps"] == 64 and runs["damaged"]["avg_max_x_pos"] == 300.0
    assert runs["damaged"]["algo"] is None and runs["damaged"]["status"] == "crashed"
    assert runs["tiny-a"]["status"] == "finished"
    table = run_mario("runs", "--artifacts-dir", str(artifacts))
    assert table.returncode == 0 and "damaged" in table.stdout, table.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["eval", "no-such-run"], "no run 'no-such-run'"),
        (["eval", "missing.pt"], "not found"),
        (["eval", "tiny-a", "--env-id", "SuperMarioBros-9-1-v0"], "unknown env id"),
        (["eval", "tiny-a", "--movement", "complex"], "disagrees with the checkpoint"),
        (["record", "tiny-a", "--output", "/proc/nope/x.mp4"], "cannot create"),
        (["record", "tiny-a", "--output", "clip.avi"], "must end in .mp4"),
        (["plot", "tiny-a", "--x", "epochs"], "--x"),
        (["eval", "tiny-a", "--stages", "1x1"], "--stages '1x1': stage '1x1' is not of the form"),
        (["eval", "tiny-a", "--policy", "best"], "--policy 'best': choose greedy"),
        (["eval", "tiny-a", "--policy", "both", "--stochastic"], "--stochastic contradicts"),
        (["eval", "tiny-a", "--noop-max", "-1"], "--noop-max -1"),
        (["record", "tiny-a", "--policy", "both"], "a video plays one policy"),
    ],
)
def test_errors_are_one_line_without_traceback(
    trained: Path, args: list[str], expected: str
) -> None:
    result = run_mario(*args, "--artifacts-dir", str(trained))
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_corrupt_model_is_one_line(trained: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"garbage")
    result = run_mario("eval", str(corrupt))
    assert result.returncode == 1 and str(corrupt) in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_deviations_lists_only_changes_that_get_further(trained: Path) -> None:
    args = ("eval", "tiny-a", "-n", "1", "--deviations", "--deviations-window", "3")
    result = run_mario(*args, "--json", "--artifacts-dir", str(trained))
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)["greedy_deviations"]
    assert found["steps"] >= 1 and found["noop_frames"] == 0 and found["window"] == 3
    # a path that died is searched to its end; one that got stuck, around where it stuck
    assert found["stuck"] == (not found["cleared"] and found["searched_to"] < found["steps"])
    assert 1 <= found["searched_to"] <= found["steps"]
    for deviation in found["saving"]:
        assert deviation["max_x_pos"] >= found["max_x_pos"] + 64
        assert found["searched_to"] - 3 <= deviation["step"] < found["searched_to"]
    clash = run_mario(*args, "--render", "--artifacts-dir", str(trained))
    assert clash.returncode != 0 and "do not mix" in clash.stderr


def test_deviations_print_as_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    from mario_cli.cli.eval import _print_deviations

    saving = [{"step": 96, "x_pos": 929, "action": "NOOP", "max_x_pos": 1660, "cleared": False}]
    found = {"window": 28, "steps": 116, "max_x_pos": 1130, "cleared": False, "stuck": False}
    _print_deviations({**found, "searched_to": 116, "saving": saving})
    shown = capsys.readouterr().out
    assert "greedy path (no no-ops): 116 steps, ended at x = 1130" in shown
    assert "929" in shown and "NOOP" in shown and "1660" in shown
    _print_deviations({**found, "searched_to": 116, "saving": []})
    assert "no one-step deviation in its last 28 steps" in capsys.readouterr().out
    # a stuck path: where it stuck, and the window before that, not its last steps
    stuck = {**found, "steps": 290, "stuck": True, "searched_to": 148, "saving": []}
    _print_deviations(stuck)
    shown = " ".join(capsys.readouterr().out.split())
    assert "stuck at x = 1130 (no new max x for 150 steps, stopped at step 290" in shown
    assert "no one-step deviation in the 28 steps before step 148" in shown
