"""Every algorithm x recurrent core (and noisy, factored, replay variants) trains and resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mario_cli.config import MarioConfig, load_config
from mario_cli.errors import CheckpointError
from mario_cli.events import Event, IterationStats, Notice, RunFinished
from mario_cli.training.checkpoint import load_checkpoint
from mario_cli.training.trainer import Trainer

CASES = [
    (algo, core, extra)
    for algo in ("ppo", "a2c", "impala")
    for core in ("none", "gru", "lstm", "transformer")
    for extra in ({},)
] + [
    ("ppo", "none", {"model": {"noisy": True}}),
    ("ppo", "none", {"model": {"action_head": "factored"}}),
    ("impala", "lstm", {"model": {"noisy": True}}),
    ("ppo", "none", {"replay": {"replay": "self_imitation", "replay_batch_size": 16}}),
    ("impala", "none", {"replay": {"per": True, "replay_batch_size": 16}}),
    ("ppo", "gru", {"replay": {"replay": "uniform", "replay_batch_size": 16}}),
]


def small_config(tmp_path: Path, algo: str, core: str, extra: dict, total: int) -> MarioConfig:
    overrides: dict = {
        "env": {"n_envs": 2, "vector_mode": "sync", "reward": {"no_progress_cut_steps": 30}},
        "model": {
            "backbone": "nature",
            "hidden_size": 32,
            "recurrent": core,
            "transformer_window": 4,
            "transformer_heads": 2,
        },
        "algo": {"algo": algo, "n_steps": 8, "batch_size": 16, "n_epochs": 1},
        "train": {"total_timesteps": total, "artifacts_dir": str(tmp_path), "run_name": "m"},
    }
    for section, values in extra.items():
        overrides.setdefault(section, {}).update(values)
    return load_config(cli_overrides=overrides, environ={})


def run(cfg: MarioConfig, resume_from: Path | None = None) -> list[Event]:
    events: list[Event] = []
    Trainer(cfg, [events.append], resume_from=resume_from).train()
    return events


@pytest.mark.parametrize(("algo", "core", "extra"), CASES, ids=lambda v: str(v))
def test_trains_two_iterations_and_resumes(
    tmp_path: Path, algo: str, core: str, extra: dict
) -> None:
    cfg = small_config(tmp_path, algo, core, extra, total=32)
    torch.manual_seed(0)
    from mario_cli.training.builders import build_policy

    initial, _ = build_policy(cfg, (4, 84, 84), 7, torch.device("cpu"))
    events = run(cfg)
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.status == "finished", finished
    stats = [e for e in events if isinstance(e, IterationStats)]
    assert len(stats) == 2
    for s in stats:
        assert all(
            torch.isfinite(torch.tensor(v)) for k, v in s.metrics.items() if k.startswith("train/")
        )
    if "replay" in extra:
        assert "replay/size" in stats[-1].metrics
        notes = [
            e.message for e in events if isinstance(e, Notice) and "zero recurrent" in e.message
        ]
        assert len(notes) == (core != "none")  # the approximation is said, once
    state = load_checkpoint(Path(finished.checkpoint))
    changed = sum(
        not torch.equal(t, state["model"][name]) for name, t in initial.state_dict().items()
    )
    assert changed > len(initial.state_dict()) // 2
    # resume the same run for two more iterations
    cfg.train.total_timesteps = 64
    resumed = run(cfg, resume_from=Path(finished.checkpoint))
    assert resumed[-1].status == "finished" and resumed[-1].step == 64


def test_impala_logs_a_real_policy_lag(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, "impala", "none", {}, total=96)
    cfg.env.vector_mode = "process"
    events = run(cfg)
    lags = [e.metrics["train/policy_lag"] for e in events if isinstance(e, IterationStats)]
    rhos = [e.metrics["train/mean_rho"] for e in events if isinstance(e, IterationStats)]
    assert max(lags) > 0  # the actor ran ahead with stale weights
    assert all(0 < r <= 1 for r in rhos)


def test_resuming_with_another_core_needs_partial_init(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, "ppo", "gru", {}, total=16)
    checkpoint = Path(run(cfg)[-1].checkpoint)
    other = small_config(tmp_path, "ppo", "lstm", {}, total=32)
    with pytest.raises(CheckpointError, match="--allow-partial-init"):
        Trainer(other, resume_from=checkpoint).train()
    other.train.allow_partial_init = True
    events = run(other, resume_from=checkpoint)
    assert events[-1].status == "finished"


def test_recurrent_state_is_reset_exactly_at_episode_ends(tmp_path: Path) -> None:
    from mario_cli.envs import VectorEnv
    from mario_cli.training.builders import build_policy
    from mario_cli.training.collector import Collector
    from mario_cli.training.rollout import RolloutStorage

    cfg = small_config(tmp_path, "ppo", "gru", {}, total=32)
    cfg.env.reward.no_progress_cut_steps = 5  # short episodes: several ends in 120 steps
    policy, _ = build_policy(cfg, (4, 84, 84), 7, torch.device("cpu"))
    calls: list[torch.Tensor] = []
    original = policy.act

    def spy(obs, state=None, done=None, deterministic=False):
        calls.append(done.clone())
        result = original(obs, state, done, deterministic)
        fresh = original(obs, None, torch.zeros_like(done), deterministic)
        new_state = result[3]
        for env in torch.nonzero(done).flatten().tolist():  # a start behaves like a zero state
            assert torch.allclose(new_state[:, env], fresh[3][:, env], atol=1e-6)
        return result

    policy.act = spy
    with VectorEnv(cfg.env, seed=0) as venv:
        collector = Collector(venv, 120, 0.9, torch.device("cpu"))
        collector.reset(0, policy, 0)
        storage = RolloutStorage(120, 2, (4, 84, 84), torch.device("cpu"))
        batch = collector.collect(policy, storage, lambda: False)
    dones = batch.dones
    assert dones.sum() >= 2
    assert torch.equal(calls[0], torch.ones(2))  # the first step starts episodes
    for t in range(1, 120):
        assert torch.equal(calls[t], dones[t - 1])  # reset exactly after an episode ended


@pytest.mark.parametrize("native_bf16", [True, False])
def test_training_says_when_it_turns_bf16_on_by_itself(
    tmp_path: Path, monkeypatch, native_bf16: bool
) -> None:
    from mario_cli.training import device as dev
    from mario_cli.training import trainer as trainer_module

    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: native_bf16)
    cfg = small_config(tmp_path, "ppo", "none", {}, total=16)
    assert cfg.train.amp is None  # the default: left to the CPU
    events = run(cfg)
    assert isinstance(events[-1], RunFinished) and events[-1].status == "finished"
    notes = [e.message for e in events if isinstance(e, Notice) and "bf16 autocast on" in e.message]
    # said once, with the way back to float32, only where bf16 was chosen for the user
    assert notes == (["bf16 autocast on: this CPU computes bfloat16 natively (--no-amp: float32)"]
                     if native_bf16 else [])  # fmt: skip
