"""Training on the real emulator with tiny budgets: learning steps, checkpoints, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mario_cli.config import MarioConfig, load_config
from mario_cli.errors import CheckpointError, MarioError
from mario_cli.events import CheckpointSaved, Event, IterationStats, Notice, RunFinished, RunStarted
from mario_cli.training.checkpoint import load_checkpoint
from mario_cli.training.trainer import Trainer
from tests.conftest import run_mario


def tiny_config(tmp_path: Path, **sections: dict) -> MarioConfig:
    overrides = {
        "env": {"n_envs": 2, "reward": {"no_progress_cut_steps": 40}},
        "algo": {"n_steps": 16, "batch_size": 16, "n_epochs": 2},
        "train": {"total_timesteps": 64, "artifacts_dir": str(tmp_path / "artifacts")},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_config(cli_overrides=overrides, environ={})


def train(cfg: MarioConfig, resume_from: Path | None = None) -> tuple[Trainer, list[Event]]:
    events: list[Event] = []
    trainer = Trainer(cfg, [events.append], resume_from=resume_from)
    trainer.train()
    return trainer, events


@pytest.mark.parametrize(
    ("backbone", "model"),
    [("nature", {}), ("impala", {"impala_channels": [8, 16, 16], "hidden_size": 64})],
)
def test_backbones_train_two_iterations(tmp_path: Path, backbone: str, model: dict) -> None:
    cfg = tiny_config(tmp_path, model={"backbone": backbone, **model})
    torch.manual_seed(0)
    from mario_cli.training.builders import build_policy

    initial, _ = build_policy(cfg, (4, 84, 84), 7, torch.device("cpu"))
    trainer, events = train(cfg)
    iterations = [e for e in events if isinstance(e, IterationStats)]
    assert len(iterations) == 2
    for stats in iterations:
        for key in ("train/loss", "train/value_loss", "train/policy_gradient_loss"):
            assert torch.isfinite(torch.tensor(stats.metrics[key]))
    assert events[-1].status == "finished" and events[-1].step == 64
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.backbone == backbone
    final = load_checkpoint(Path(events[-1].checkpoint))
    changed = [
        name
        for name, tensor in initial.state_dict().items()
        if not torch.equal(tensor, final["model"][name])
    ]
    assert len(changed) >= len(initial.state_dict()) // 2  # learning moved the weights


def test_checkpoint_round_trip_is_bit_exact(tmp_path: Path) -> None:
    trainer, events = train(tiny_config(tmp_path))
    state = load_checkpoint(Path(events[-1].checkpoint))
    for name, tensor in trainer.policy.state_dict().items():
        assert torch.equal(tensor.cpu(), state["model"][name]), name
    saved_opt = state["optimiser"]["optimizer"]["state"]
    live_opt = trainer.optimiser.optimizer.state_dict()["state"]
    for index, slots in live_opt.items():
        for slot, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(saved_opt[index][slot]))
    assert state["global_step"] == 64 and state["actions"][1] == "right"
    assert state["config"]["algo"]["n_steps"] == 16


def test_resume_continues_step_count_and_optimizer_state(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    _, first = train(cfg)
    checkpoint = Path(first[-1].checkpoint)
    saved = load_checkpoint(checkpoint)
    # As left by a run killed after its checkpoint: a record past it, and a line cut short.
    metrics = checkpoint.parent.parent / "metrics.jsonl"
    with metrics.open("a") as handle:
        handle.write(json.dumps({"type": "IterationStats", "step": 96, "iteration": 99}) + "\n")
        handle.write('{"type": "IterationStats", "st')
    cfg.train.total_timesteps = 128
    events: list[Event] = []
    resumed = Trainer(cfg, [events.append], resume_from=checkpoint)
    resumed._setup()
    restored = resumed.optimiser.optimizer.state_dict()
    for index, slots in saved["optimiser"]["optimizer"]["state"].items():
        assert torch.equal(restored["state"][index]["exp_avg"], slots["exp_avg"])
    assert resumed.optimiser.scheduler.last_epoch == saved["optimiser"]["scheduler"]["last_epoch"]
    finished = resumed._loop()
    resumed._close()
    assert events[0].start_step == 64
    steps = [e.step for e in events if isinstance(e, IterationStats)]
    assert steps == [96, 128]
    assert finished.step == 128
    resumed._record.close()
    # the run's metrics.jsonl continues on one step axis
    assert resumed.run.root == checkpoint.parent.parent
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]  # all whole
    iterations = [r for r in logged if r["type"] == "IterationStats"]
    assert [r["step"] for r in iterations] == [32, 64, 96, 128]
    assert 99 not in [r["iteration"] for r in iterations]  # the record past the checkpoint


def test_resume_takes_the_new_learning_rate_and_resumes_from_best(tmp_path: Path) -> None:
    trainer, first = train(tiny_config(tmp_path))
    final = Path(first[-1].checkpoint)
    # best.pt as the trainer writes it (a tiny run has too few episodes to judge one).
    assert trainer.checkpoints.save_best(trainer._payload(with_optimiser=False), score=1.0)
    saved_updates = load_checkpoint(final)["optimiser"]["scheduler"]["last_epoch"]
    cfg = tiny_config(
        tmp_path,
        algo={"learning_rate": 1e-3, "lr_schedule": "constant"},
        train={"total_timesteps": 128},
    )
    resumed = Trainer(cfg, resume_from=final)
    try:
        resumed._setup()
        assert resumed.optimiser.learning_rate == pytest.approx(1e-3)
        assert resumed.optimiser.scheduler.last_epoch == saved_updates
    finally:
        resumed._close()

    best = final.parent / "best.pt"
    assert "optimiser" not in load_checkpoint(best)  # best.pt keeps weights only
    events: list[Event] = []
    from_best = Trainer(
        tiny_config(tmp_path, train={"total_timesteps": 128}), [events.append], resume_from=best
    )
    finished = from_best.train()
    assert finished.status == "finished" and finished.step == 128
    assert any(isinstance(e, Notice) and "holds weights only" in e.message for e in events)


def test_partial_init_skips_exactly_the_action_head(tmp_path: Path) -> None:
    _, events = train(tiny_config(tmp_path, env={"movement": "right_only"}))
    source = Path(events[-1].checkpoint)
    cfg = tiny_config(
        tmp_path,
        env={"movement": "simple"},
        train={"init_model_path": str(source), "allow_partial_init": True, "total_timesteps": 32},
    )
    trainer, new_events = train(cfg)
    notice = next(e for e in new_events if isinstance(e, Notice) and "skipped" in e.message)
    assert "actor.bias, actor.weight" in notice.message
    assert "critic" not in notice.message and "backbone" not in notice.message
    strict = tiny_config(
        tmp_path, env={"movement": "simple"}, train={"init_model_path": str(source)}
    )
    with pytest.raises(CheckpointError, match="--allow-partial-init"):
        Trainer(strict).train()


def test_partial_init_error_through_the_cli_is_one_line(tmp_path: Path) -> None:
    _, events = train(tiny_config(tmp_path, env={"movement": "right_only"}))
    result = run_mario(
        "train",
        "--init-model-path",
        events[-1].checkpoint,
        "--movement",
        "simple",
        "--n-envs",
        "2",
        "--total-timesteps",
        "32",
        "--n-steps",
        "16",
        "--artifacts-dir",
        str(tmp_path / "artifacts"),
    )
    assert result.returncode == 1
    assert "--allow-partial-init" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    result = run_mario("resume", str(tmp_path / "nope.pt"))
    assert result.returncode == 1 and "not found" in result.stderr
    broken = tmp_path / "run" / "checkpoints" / "broken.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"PK\x03\x04 truncated")
    result = run_mario("resume", str(broken))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and str(broken) in result.stderr
    # A checkpoint outside a run folder has no run to continue: say how to start one.
    loose = tmp_path / "weights.pt"
    loose.write_bytes(b"")
    result = run_mario("resume", str(loose))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"mario resume --init-model-path {loose}" in result.stderr
    result = run_mario("resume", "somerun", "--init-model-path", str(loose))
    assert result.returncode == 1 and "not both" in result.stderr
    result = run_mario("resume")
    assert result.returncode == 1 and "mario train" in result.stderr


def test_sigint_during_training_leaves_a_checkpoint_that_resumes(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    args = [
        sys.executable,
        "-m",
        "mario_cli",
        "train",
        "--run-name",
        "sig",
        "--ui",
        "plain",
        "--n-envs",
        "2",
        "--n-steps",
        "16",
        "--batch-size",
        "32",
        "--n-epochs",
        "1",
        "--total-timesteps",
        "100000",
        "--artifacts-dir",
        str(artifacts),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARIO_")}
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    metrics = artifacts / "runs" / "sig" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if metrics.is_file() and '"IterationStats"' in metrics.read_text():
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C in a terminal: the whole group
    time.sleep(0.01)
    os.kill(proc.pid, signal.SIGINT)  # the same Ctrl-C delivered twice (as `timeout` does)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "mario resume sig" in out
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    saved = [r for r in records if r["type"] == "CheckpointSaved" and r["kind"] == "interrupt"]
    assert saved and Path(saved[0]["path"]).is_file()
    step = saved[0]["step"]
    assert step >= 32
    result = run_mario(
        "resume",
        "sig",
        "--artifacts-dir",
        str(artifacts),
        "--total-timesteps",
        str(step + 32),
        "--ui",
        "quiet",
    )
    assert result.returncode == 0, result.stderr
    assert (
        load_checkpoint(artifacts / "runs" / "sig" / "checkpoints" / "final.pt")["global_step"]
        == step + 32
    )


def test_nan_loss_stops_with_clear_message(tmp_path: Path, monkeypatch) -> None:
    cfg = tiny_config(tmp_path, train={"total_timesteps": 96, "save_freq": 32})
    from mario_algos import ppo

    calls = {"n": 0}
    original = ppo.PPO.update

    def poisoned(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            batch.rewards[:] = float("nan")
        return original(self, batch)

    monkeypatch.setattr(ppo.PPO, "update", poisoned)
    trainer, events = train(cfg)
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.status == "failed"
    assert "loss became nan" in finished.reason
    assert finished.checkpoint is not None  # the last good checkpoint is kept
    good = load_checkpoint(Path(finished.checkpoint))
    assert good["global_step"] == 32
    assert all(torch.isfinite(t).all() for t in good["model"].values())
    assert not [e for e in events if isinstance(e, CheckpointSaved) and e.kind == "final"]


def test_a_run_in_use_is_refused_and_keeps_its_lock(tmp_path: Path) -> None:
    _, events = train(tiny_config(tmp_path))
    checkpoint = Path(events[-1].checkpoint)
    lock = checkpoint.parent.parent / "run.lock"
    metrics = checkpoint.parent.parent / "metrics.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{holder.pid}\n")  # another live process trains this run
        with metrics.open("a") as handle:  # ... and has logged past the checkpoint
            handle.write(json.dumps({"type": "IterationStats", "step": 96}) + "\n")
        logged = metrics.read_text()
        cfg = tiny_config(tmp_path, train={"total_timesteps": 128})
        with pytest.raises(MarioError, match=f"being trained by process {holder.pid}"):
            Trainer(cfg, resume_from=checkpoint).train()
        assert lock.read_text().strip() == str(holder.pid)
        assert metrics.read_text() == logged  # its log was not cut back to the checkpoint
    finally:
        holder.kill()


def test_a_failing_torch_compile_falls_back_to_eager_with_one_notice(
    tmp_path: Path, monkeypatch
) -> None:
    def broken_compile(fn, *args, **kwargs):
        def compiled(*a, **k):
            raise RuntimeError("inductor exploded\nlong trace")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    trainer, events = train(tiny_config(tmp_path, train={"compile": True}))
    notices = [e.message for e in events if isinstance(e, Notice) and "compile" in e.message]
    assert notices == ["torch.compile failed (RuntimeError: inductor exploded); running eager"]
    assert events[-1].status == "finished" and events[-1].step == 64


def test_bf16_autocast_on_cpu_trains_and_keeps_float32_weights(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, train={"amp": True, "device": "cpu"})
    trainer, events = train(cfg)
    assert trainer.optimiser.amp_dtype == torch.bfloat16
    iterations = [e for e in events if isinstance(e, IterationStats)]
    assert len(iterations) == 2
    for stats in iterations:
        assert torch.isfinite(torch.tensor(stats.metrics["train/loss"]))
        # the heads hand float32 to the losses: approx_kl of the first epoch is tiny, not noise
        assert abs(stats.metrics["train/approx_kl"]) < 0.05
    state = load_checkpoint(Path(events[-1].checkpoint))
    assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())
