"""Resuming restores what the checkpoint holds, exactly: gru, lstm, transformer and PER.

A checkpoint holds the weights, the optimiser (moments, lr schedule, grad scaler), the
step counters, the episode window and the python / numpy / torch RNG states. It cannot
hold the emulators: nes-py's machine state is a native object that does not pickle, so
a resumed run starts every env's episode again at the stage start (and with it the
collector's recurrent state, which restarts at zero at an episode start anyway). PER's
replay buffer is not saved either (``replay_capacity`` frames of 4x84x84 bytes, 460 MB
at the default) and neither is its sampling RNG: the resumed run's replay starts empty.

To compare an interrupted-then-resumed run with an uninterrupted one, the envs here
end every episode after exactly one rollout (a time-limit wrapper, registered as a
plugin), so at the checkpoint every env is at an episode start in both runs and the
emulator state that cannot be saved is the same. With the recurrent cores the two runs
then agree bit for bit; with PER they part at the first replay update after resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch

from mario_algos.minibatches import iterate_minibatches
from mario_cli.config import EnvConfig, MarioConfig, load_config
from mario_cli.hookspecs import hookimpl
from mario_cli.plugins import PluginHost, set_host
from mario_cli.training.checkpoint import load_checkpoint
from mario_cli.training.rollout import RolloutBatch
from mario_cli.training.trainer import Trainer

N_STEPS = 16
ROLLOUT = 2 * N_STEPS
CHECKPOINT = 2 * ROLLOUT  # the "interruption": a run killed right after this checkpoint
TOTAL = 3 * ROLLOUT


class OneRolloutEpisodes:
    """A wrapper plugin: every episode is truncated after ``N_STEPS`` agent steps."""

    @hookimpl
    def register_wrappers(self, register: Any) -> None:
        register("one_rollout", lambda env, cfg: gym.wrappers.TimeLimit(env, N_STEPS))


@pytest.fixture(autouse=True)
def _one_rollout_episodes() -> Iterator[None]:
    set_host(PluginHost(extra_plugins=[OneRolloutEpisodes()]))  # in-process: sync mode
    yield
    set_host(None)


def fidelity_config(tmp_path: Path, model: dict[str, Any], replay: dict[str, Any]) -> MarioConfig:
    return load_config(
        cli_overrides={
            "env": {
                "n_envs": 2,
                "vector_mode": "sync",
                "reward": {"no_progress_cut_steps": 0},
                "wrappers": [*EnvConfig().wrappers, "one_rollout"],
            },
            "model": {"hidden_size": 64, "recurrent_hidden": 32, **model},
            "algo": {"n_steps": N_STEPS, "batch_size": ROLLOUT, "n_epochs": 2},
            "replay": replay,
            "train": {
                "total_timesteps": TOTAL,
                "save_freq": CHECKPOINT,
                "torch_threads": 1,
                # float32 on every host: bf16 rounds differently for each batch shape, so
                # collection and update would part by ~1e-4 and hide which weights acted
                "amp": False,
                "run_name": "fidelity",
                "artifacts_dir": str(tmp_path / "artifacts"),
            },
        },
        environ={},
    )


def assert_same_tensors(actual: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for name, value in expected.items():
        if isinstance(value, dict):
            assert_same_tensors(actual[name], value, f"{what}[{name!r}]")
        elif isinstance(value, torch.Tensor):
            assert torch.equal(torch.as_tensor(actual[name]), value), f"{what}[{name!r}]"
        else:
            assert actual[name] == value, f"{what}[{name!r}]"


def behaviour_gap(policy: torch.nn.Module, batch: RolloutBatch) -> tuple[float, float]:
    """(approx_kl, largest |log-ratio|) between the policy that collected ``batch`` and
    ``policy``, over the whole rollout: the first minibatch of the update. PPO's approx_kl
    is second order in the log-ratio, so the log-ratio itself is the sharper check."""
    zeros = torch.zeros_like(batch.rewards)
    with torch.no_grad():
        (mb,) = iterate_minibatches(policy, batch, zeros, zeros, ROLLOUT, shuffle=False)
        log_ratio = mb.log_probs - mb.old_log_probs
        kl = ((log_ratio.exp() - 1) - log_ratio).mean()
        return float(kl), float(log_ratio.abs().max())


def resume_and_watch(cfg: MarioConfig, checkpoint: Path) -> tuple[Trainer, dict[str, Any]]:
    """Resume from ``checkpoint`` to the end; check what ``_setup`` restored, and record the
    weights and approx_kl that the first update starts from."""
    saved = load_checkpoint(checkpoint)
    trainer = Trainer(cfg, resume_from=checkpoint)
    trainer._setup()
    assert_same_tensors(trainer.policy.state_dict(), saved["model"], "weights")
    assert_same_tensors(trainer.optimiser.state_dict(), saved["optimiser"], "optimiser")
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert (trainer.global_step, trainer.iteration) == (CHECKPOINT, 2)
    assert [episode.to_record() for episode in trainer.episodes] == saved["episodes"]

    first: dict[str, Any] = {}
    update = trainer.algorithm.update

    def watched(batch: RolloutBatch) -> dict[str, float]:
        if not first:
            first["weights"] = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
            first["kl"], first["log_ratio"] = behaviour_gap(trainer.policy, batch)
            first["replay"] = len(trainer.algorithm.replay or ())
        return update(batch)

    trainer.algorithm.update = watched
    try:
        finished = trainer._loop()
    finally:
        trainer._close()
        trainer._record.close()
    assert finished.status == "finished" and finished.step == TOTAL
    assert_same_tensors(first["weights"], saved["model"], "weights at the first update")
    # The rollout was collected by exactly these weights (both read 0.0 here).
    assert abs(first["kl"]) < 1e-9 and first["log_ratio"] < 1e-5
    return trainer, first


def straight_run(cfg: MarioConfig) -> tuple[dict[str, Any], Path]:
    """The uninterrupted run: its final state, and its checkpoint at CHECKPOINT steps."""
    trainer = Trainer(cfg)
    assert trainer.train().step == TOTAL
    folder = trainer.run.checkpoints
    return load_checkpoint(folder / "final.pt"), folder / f"ckpt_{CHECKPOINT:012d}.pt"


@pytest.mark.parametrize(
    "model",
    [
        {"recurrent": "gru"},
        {"recurrent": "lstm"},
        {"recurrent": "transformer", "transformer_layers": 1, "transformer_heads": 2},
    ],
    ids=lambda model: model["recurrent"],
)
def test_a_resumed_recurrent_run_matches_the_uninterrupted_one(
    tmp_path: Path, model: dict[str, Any]
) -> None:
    cfg = fidelity_config(tmp_path, model, {})
    final, checkpoint = straight_run(cfg)
    resumed, _ = resume_and_watch(cfg, checkpoint)
    assert [e["length"] for e in final["episodes"]] == [N_STEPS] * 6  # two per rollout
    saved = load_checkpoint(checkpoint)["model"]
    assert any(not torch.equal(saved[k], v) for k, v in final["model"].items())  # it learned
    assert_same_tensors(resumed.policy.state_dict(), final["model"], "final weights")
    assert_same_tensors(resumed.optimiser.state_dict(), final["optimiser"], "final optimiser")
    assert [episode.to_record() for episode in resumed.episodes] == final["episodes"]


def test_a_resumed_per_run_restores_the_learner_and_starts_with_an_empty_replay(
    tmp_path: Path,
) -> None:
    replay = {"per": True, "replay_capacity": 4 * ROLLOUT, "replay_batch_size": ROLLOUT}
    cfg = fidelity_config(tmp_path, {}, replay)
    final, checkpoint = straight_run(cfg)
    assert load_checkpoint(checkpoint)["algorithm"] == {}  # no replay in it: see above
    resumed, first = resume_and_watch(cfg, checkpoint)
    assert first["replay"] == 0  # the straight run held CHECKPOINT transitions here
    assert len(resumed.algorithm.replay) == ROLLOUT
    # What does not depend on the replay still agrees: the step axis and the episodes.
    assert [episode.to_record() for episode in resumed.episodes] == final["episodes"]
