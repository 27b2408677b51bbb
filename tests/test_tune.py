"""mario tune with tiny budgets on real Optuna storage and the real emulator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from mario_cli.config import load_config
from mario_cli.training.trainer import TrainingControl
from mario_cli.tuning import make_objective, make_pruner, open_storage
from tests.conftest import run_mario

TINY = """
[env]
n_envs = 2
vector_mode = "sync"
[env.reward]
no_progress_cut_steps = 3
[algo]
n_steps = 16
batch_size = 32
n_epochs = 1
[tune]
timesteps_per_trial = 160
[tune.space]
"algo.learning_rate" = { type = "float", low = 1e-5, high = 1e-3, log = true }
"algo.ent_coef" = { type = "categorical", choices = [0.0, 0.01] }
"""


@pytest.fixture
def tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tune.toml"
    path.write_text(TINY)
    return path


def trials_of(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(storage)).trials


def test_three_trials_complete_and_rerun_adds_to_the_study(tmp_path: Path, tiny_toml: Path) -> None:
    export = tmp_path / "best.toml"
    result = run_mario(
        "tune",
        "--config",
        str(tiny_toml),
        "--trials",
        "3",
        "--study-name",
        "s1",
        "--export",
        str(export),
        # The median pruner may prune the third trial at its last report; not the point here.
        "--pruner",
        "none",
    )
    assert result.returncode == 0, result.stderr
    assert "best trial" in result.stdout
    storage = f"sqlite:///{tmp_path / 'artifacts' / 'tune' / 's1.db'}"
    trials = trials_of(storage, "s1")
    assert len(trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    runs = sorted(p.name for p in (tmp_path / "artifacts" / "runs").iterdir())
    assert runs == ["s1-trial-0", "s1-trial-1", "s1-trial-2"]  # kept for mario plot
    # the export round-trips into the config
    shown = run_mario("config", "show", "--json", "--config", str(export))
    assert shown.returncode == 0, shown.stderr
    best = max(trials, key=lambda t: t.value)
    assert json.loads(shown.stdout)["algo"]["learning_rate"] == pytest.approx(
        best.params["algo.learning_rate"]
    )
    again = run_mario("tune", "--config", str(tiny_toml), "--trials", "2", "--study-name", "s1")
    assert again.returncode == 0, again.stderr
    assert len(trials_of(storage, "s1")) == 5
    assert [t.number for t in trials_of(storage, "s1")] == [0, 1, 2, 3, 4]


def test_two_processes_share_one_journal_study(tmp_path: Path, tiny_toml: Path) -> None:
    journal = f"journal:{tmp_path / 'shared' / 'study.log'}"
    args = [
        sys.executable,
        "-m",
        "mario_cli",
        "tune",
        "--config",
        str(tiny_toml),
        "--study-name",
        "shared",
        "--storage",
        journal,
        "--total-trials",
        "4",
    ]
    workers = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
    trials = trials_of(journal, "shared")
    finished = [t for t in trials if t.state.is_finished()]
    assert 4 <= len(finished) <= 5  # at most one extra in flight when the other stopped
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    run_names = [t.user_attrs["run_name"] for t in finished]
    assert len(run_names) == len(set(run_names))  # no trial ran twice


def tiny_config(tmp_path: Path):
    return load_config(config_path=Path(tmp_path / "tune.toml"), environ={})


def test_pruner_prunes_a_clearly_bad_trial(tmp_path: Path, tiny_toml: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg.train.artifacts_dir = tmp_path / "artifacts"
    space = {"env.frame_skip": {"type": "categorical", "choices": [4, 1]}}
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", 160))
    # One frame per step: Mario has not started moving after 3 steps, so every episode
    # is cut at the start line (x = 40) while the others walk to the first goomba.
    for skip in (4, 4, 4, 1):
        study.enqueue_trial({"env.frame_skip": skip})
    study.optimize(make_objective(cfg, space, "p", TrainingControl), n_trials=4)
    states = [t.state for t in study.trials]
    assert states[:3] == [optuna.trial.TrialState.COMPLETE] * 3
    assert states[3] == optuna.trial.TrialState.PRUNED


def test_a_failing_trial_is_failed_and_the_study_goes_on(tmp_path: Path, tiny_toml: Path) -> None:
    from mario_cli.errors import MarioError

    cfg = tiny_config(tmp_path)
    cfg.train.artifacts_dir = tmp_path / "artifacts"
    space = {
        "env.env_id": {
            "type": "categorical",
            "choices": ["SuperMarioBros-1-1-v0", "SuperMarioBros-9-9-v0"],
        }
    }
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"env.env_id": "SuperMarioBros-9-9-v0"})
    study.enqueue_trial({"env.env_id": "SuperMarioBros-1-1-v0"})
    study.optimize(
        make_objective(cfg, space, "f", TrainingControl), n_trials=2, catch=(MarioError,)
    )
    assert [t.state for t in study.trials] == [
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.COMPLETE,
    ]


def test_bad_search_space_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[tune.space]\n"algo.gamma" = { type = "float", low = 0.99, high = 0.9 }\n')
    result = run_mario("tune", "--config", str(bad))
    assert result.returncode == 2
    assert "algo.gamma" in result.stderr and "low < high" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
