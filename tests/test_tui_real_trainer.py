"""The TUI's keys on the real trainer: env worker processes, the emulator, a headless pilot.

tests/test_tui.py drives the screen with a scripted trainer; here ``p``, ``s`` and
``q`` then ``y`` reach the real ``Trainer`` through the app the CLI builds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mario_cli.config import load_config
from mario_cli.events import Event, IterationStats
from mario_cli.metrics import read_records
from mario_cli.training.checkpoint import load_checkpoint
from mario_cli.training.trainer import Trainer, TrainingControl
from mario_cli.tui.app import training_app
from mario_cli.tui.run import _start_resource_tracker
from mario_cli.tui.screens import ConfirmQuit

SIZE = (140, 44)
ROLLOUT = 32  # 2 envs x 16 steps


def tiny_config(tmp_path: Path, **train: Any):
    return load_config(
        cli_overrides={
            "env": {"n_envs": 2, "n_workers": 2, "reward": {"no_progress_cut_steps": 40}},
            "algo": {"n_steps": 16, "batch_size": 32, "n_epochs": 1},
            "train": {
                "total_timesteps": 100_000,
                "save_freq": 1_000_000,
                "torch_threads": 1,
                "run_name": "tui",
                "artifacts_dir": str(tmp_path / "artifacts"),
                **train,
            },
        },
        environ={},
    )


async def until(pilot: Any, condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def test_p_s_and_q_steer_the_real_trainer_and_the_interrupt_checkpoint_resumes(
    tmp_path: Path,
) -> None:
    cfg = tiny_config(tmp_path)
    control = TrainingControl()
    trainers: list[Trainer] = []

    def make_trainer(sink: Callable[[Event], None]) -> Trainer:
        trainers.append(Trainer(cfg, [sink], control))
        return trainers[0]

    _start_resource_tracker()  # as `mario train --ui tui` does before the screen opens
    app = training_app(cfg, control, make_trainer)
    seen: dict[str, Any] = {}

    def iterations() -> int:
        return app.state.snapshot().iterations

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: iterations() >= 1, 180, "the first iteration")
            first = time.monotonic()
            await until(pilot, lambda: iterations() >= 2, 60, "the second iteration")
            # Long enough for two iterations at this machine's current speed.
            window = max(2.0, 2.5 * (time.monotonic() - first))
            trainer = trainers[0]

            await pilot.press("p")
            assert control.paused and "paused" in str(app.query_one("#header").content)
            pressed_at = trainer.global_step
            await pilot.pause(window)  # the iteration under way may still finish
            frozen = trainer.global_step
            assert frozen <= pressed_at + ROLLOUT
            await pilot.pause(window)
            assert trainer.global_step == frozen, "the step count moved while paused"
            await pilot.press("p")
            assert not control.paused
            await until(pilot, lambda: trainer.global_step > frozen, 60, "training to resume")

            await pilot.press("s")
            await until(pilot, lambda: _saved(trainer, "manual"), 60, "the manual checkpoint")
            seen["manual"] = _saved(trainer, "manual")

            await pilot.press("q")
            assert isinstance(app.screen, ConfirmQuit)
            await pilot.press("y")
            await until(pilot, lambda: app.outcome.done.is_set(), 60, "the trainer to stop")

    asyncio.run(scenario())
    trainer = trainers[0]
    assert app.outcome.error is None
    finished = app.outcome.finished
    assert finished.status == "interrupted" and finished.reason == "quit from the TUI"
    assert not trainer.run.lock.exists()

    (manual,) = seen["manual"]
    assert load_checkpoint(Path(manual["path"]))["global_step"] == manual["step"]
    (interrupt,) = _saved(trainer, "interrupt")
    assert Path(finished.checkpoint) == Path(interrupt["path"])
    assert interrupt["step"] == finished.step >= manual["step"]

    # The interrupt checkpoint resumes where the screen left off.
    resumed_cfg = tiny_config(tmp_path, total_timesteps=finished.step + ROLLOUT)
    resumed_cfg.env.vector_mode = "sync"
    events: list[Event] = []
    done = Trainer(resumed_cfg, [events.append], resume_from=Path(finished.checkpoint)).train()
    assert done.status == "finished" and done.step == finished.step + ROLLOUT
    assert [e.step for e in events if isinstance(e, IterationStats)] == [done.step]


def _saved(trainer: Trainer, kind: str) -> list[dict[str, Any]]:
    path = trainer.run.metrics if trainer.run is not None else None
    if path is None or not path.is_file():
        return []
    return [r for r in read_records(path) if r["type"] == "CheckpointSaved" and r["kind"] == kind]
