"""IMPALA with Ray actors, on the real emulator and a real Ray cluster.

One cluster for the module, started the way a user starts a head node
(``ray start --head --block``): the in-process trainers and the ``mario`` processes
join it by address. One test starts its own local Ray instead, as ``mario train``
does without ``--ray-address``, and stops it with Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mario_cli.config import MarioConfig, load_config
from mario_cli.errors import ConfigError, MarioError
from mario_cli.events import ActorEvent, Event, IterationStats, RunFinished
from mario_cli.metrics import read_records
from mario_cli.training.checkpoint import CheckpointManager, load_checkpoint
from mario_cli.training.trainer import Trainer, TrainingControl
from tests.conftest import run_mario

ray = pytest.importorskip("ray")

ROLLOUT = 16  # 1 env x 16 steps per actor rollout
TINY = (
    "--algo", "impala", "--actors", "ray", "--n-actors", "2", "--n-envs", "1",
    "--n-steps", "16", "--batch-size", "16", "--backbone", "nature", "--hidden-size", "32",
    "--torch-threads", "1", "--reward-no-progress-cut-steps", "30",
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A 2-CPU Ray head node for the module; this process joins it. Yields its address."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARIO_", "RAY_"))}
    env["RAY_AUTH_MODE"] = "disabled"  # so that joining needs no token (Ray >= 2.5x default)
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [
            str(ray_cli), "start", "--head", "--block", "--port", str(port),
            "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
            "--ray-client-server-port", str(_free_port()),
            "--dashboard-agent-listen-port", str(_free_port()),
            "--object-store-memory", str(200 * 2**20),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        _wait_until(lambda: _answers(port) or head.poll() is not None, 120, "ray start --head")
        assert head.poll() is None, "ray start --head exited"
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        yield address
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        head.terminate()  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return read_records(path) if path.is_file() else []


def _iterations(run: Path) -> int:
    return sum(r["type"] == "IterationStats" for r in _records(run))


def _spawn(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARIO_", "RAY_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "mario_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C sees it
    )


def _config(tmp_path: Path, **train: object) -> MarioConfig:
    overrides: dict = {
        "env": {"n_envs": 1, "reward": {"no_progress_cut_steps": 30}},
        "model": {"backbone": "nature", "hidden_size": 32},
        "algo": {"algo": "impala", "n_steps": ROLLOUT, "batch_size": 16},
        "train": {
            "actors": "ray",
            "n_actors": 2,
            "total_timesteps": 100_000,
            "torch_threads": 1,
            "artifacts_dir": str(tmp_path),
            "run_name": "r",
            **train,
        },
    }
    return load_config(cli_overrides=overrides, environ={})


# ----------------------------------------------------------- without a cluster
def test_rollouts_travel_as_numpy_and_come_back_as_the_batch(tmp_path: Path) -> None:
    from mario_cli.training.builders import build_policy
    from mario_cli.training.ray_actors import (
        RolloutWorker,
        _actor_config,
        batch_from_rollout,
        state_to_numpy,
    )

    cfg = _config(tmp_path)
    cfg.model.recurrent = "lstm"  # a tuple recurrent state crosses over too
    learner, _ = build_policy(cfg, (4, 84, 84), 7, torch.device("cpu"))
    worker = RolloutWorker(_actor_config(cfg, "nature"), seed=0)
    worker.load_weights(state_to_numpy(learner), version=5)
    for name, tensor in learner.state_dict().items():
        assert torch.equal(worker.policy.state_dict()[name], tensor)
    result = worker.rollout([None], version=5)  # same version: the weights are not fetched
    arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    assert not any(isinstance(v, torch.Tensor) for v in result.values())
    assert arrays["obs"].dtype == np.uint8 and arrays["obs"].shape == (ROLLOUT, 1, 4, 84, 84)
    assert all(isinstance(s, np.ndarray) for s in result["initial_state"])
    batch = batch_from_rollout(result, torch.device("cpu"))
    assert batch.policy_version == 5 and batch.num_steps == ROLLOUT and batch.num_envs == 1
    assert batch.obs.dtype == torch.uint8 and batch.actions.dtype == torch.long
    assert isinstance(batch.initial_state, tuple) and batch.initial_state[0].dtype == torch.float32
    worker.venv.close()


def test_ray_actors_need_an_asynchronous_algorithm(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg.algo.algo = "ppo"
    with pytest.raises(ConfigError, match="'ppo' is synchronous: use --algo impala"):
        Trainer(cfg).train()
    assert not (tmp_path / "runs").exists()  # refused before the run folder


def test_without_ray_installed_it_says_how_to_install_it(monkeypatch) -> None:
    from mario_cli.training.ray_actors import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MarioError, match=r"pip install 'mario-rl\[ray\]'"):
        import_ray()


def test_a_slot_that_keeps_losing_actors_or_cannot_start_one_stops_the_run(
    tmp_path: Path,
) -> None:
    from mario_cli.training.ray_actors import RayCollector, _loss_reason

    events: list[Event] = []
    cpu = torch.device("cpu")
    collector = RayCollector(_config(tmp_path), "nature", cpu, 0, lambda: False, events.append)
    died = ray.exceptions.ActorDiedError()
    ray_text = (
        "The actor died unexpectedly before finishing this task.\n\tclass_name: RolloutWorker\n"
        "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR"
    )
    assert _loss_reason(Exception(ray_text)) == "its worker process has died"
    slot = collector._slots[1]
    collector._lose(slot, died)
    collector._lose(slot, died)
    with pytest.raises(MarioError, match="Ray actor 1 was lost 3 times in a row"):
        collector._lose(slot, died)
    collector._flush_events()
    assert [(e.kind, e.actor) for e in events] == [("lost", 1), ("lost", 1)]

    class InitFailed(Exception):
        actor_init_failed = True

    trace = "raised in its creation task\nTraceback (most recent call last):\nValueError: no env"
    with pytest.raises(MarioError, match="Ray actor 0 could not start: ValueError: no env$"):
        collector._lose(collector._slots[0], InitFailed(trace))


def test_a_bad_ray_address_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    result = run_mario(
        "train", *TINY, "--ray-address", f"127.0.0.1:{port}", "--artifacts-dir", str(tmp_path)
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in lines[0]
    assert f"ray start --head --port {port}" in lines[0]
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------- on the cluster
def test_two_ray_actors_train_and_a_killed_one_is_replaced(tmp_path: Path, cluster: str) -> None:
    cfg = _config(tmp_path)
    events: list[Event] = []
    control = TrainingControl()
    killed: list[int] = []
    after_replacement: list[int] = []

    def actor_events(kind: str) -> list[ActorEvent]:
        return [e for e in events if isinstance(e, ActorEvent) and e.kind == kind]

    def on_iteration(step: int, metrics: dict[str, float]) -> None:
        started = {e.actor: e.pid for e in actor_events("started")}
        if not killed and len(started) == 2 and step >= 4 * ROLLOUT:
            killed.append(started[1])
            os.kill(started[1], signal.SIGKILL)  # the process dies mid-run
        elif actor_events("replaced"):
            after_replacement.append(step)
            if len(after_replacement) == 2:
                control.request_stop("the test saw the replacement at work")

    trainer = Trainer(cfg, [events.append], control, on_iteration=on_iteration)
    finished = trainer.train()

    assert isinstance(finished, RunFinished) and finished.status == "interrupted", finished
    assert finished.reason == "the test saw the replacement at work"
    (lost,) = actor_events("lost")
    (replaced,) = actor_events("replaced")
    assert lost.actor == 1 and lost.pid == killed[0] and lost.reason
    assert "unfinished rollout is dropped" in lost.message
    assert replaced.actor == 1 and replaced.pid not in (None, killed[0])
    stats = [e for e in events if isinstance(e, IterationStats)]
    assert [s.step for s in stats] == list(range(ROLLOUT, stats[-1].step + 1, ROLLOUT))
    last = stats[-1].metrics
    assert last["actors/count"] == 2 and last["actors/lost"] == 1
    assert last["actors/fps_0"] > 0 and last["actors/fps_1"] > 0
    lags = [s.metrics["train/policy_lag"] for s in stats]
    assert min(lags) >= 0 and max(lags) >= 1  # two actors act with weights a step or more old
    assert all(np.isfinite(s.metrics["train/loss"]) for s in stats)
    # The loss is in metrics.jsonl, and the interrupt checkpoint holds every step.
    logged = _records(tmp_path / "runs" / "r")
    assert [r["kind"] for r in logged if r["type"] == "ActorEvent"].count("lost") == 1
    assert load_checkpoint(Path(finished.checkpoint))["global_step"] == stats[-1].step
    assert ray.is_initialized()  # a cluster the trainer only joined stays up


def test_joins_a_ray_start_cluster_and_resume_uses_ray_again(tmp_path: Path, cluster: str) -> None:
    artifacts = tmp_path / "artifacts"
    run = artifacts / "runs" / "j"
    result = run_mario(
        "train", *TINY, "--ray-address", cluster, "--total-timesteps", str(3 * ROLLOUT),
        "--run-name", "j", "--artifacts-dir", str(artifacts), "--ui", "plain",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "finished at step 48" in result.stdout
    assert re.search(r"Ray actor \d is collecting", result.stdout)  # a line of the display
    notices = [r["message"] for r in _records(run) if r["type"] == "Notice"]
    assert any("2 Ray actors x 1 env on the Ray cluster at" in n for n in notices), notices
    # Our actors are gone; the cluster is not.
    _wait_until(lambda: ray.available_resources().get("CPU", 0) == 2, 30, "the actors' CPUs")
    accumulator = EventAccumulator(str(run / "tb"))
    accumulator.Reload()
    assert [e.value for e in accumulator.Scalars("actors/count")][-1] >= 1

    # Resuming a Ray run uses Ray again (and the saved address), without any flag;
    # SIGTERM saves a checkpoint and exits 0, as without Ray.
    proc = _spawn("resume", "j", "--artifacts-dir", str(artifacts), "--total-timesteps", "100000")
    try:
        _wait_until(
            lambda: _iterations(run) >= 4 or proc.poll() is not None, 180, "a resumed iteration"
        )
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "interrupted at step" in out and "SIGTERM received" in out
    logged = _records(run)
    second = [i for i, r in enumerate(logged) if r["type"] == "RunStarted"][1]
    assert any(r["type"] == "ActorEvent" for r in logged[second:])
    (interrupt,) = [r["step"] for r in logged if r.get("kind") == "interrupt"]
    assert interrupt >= 4 * ROLLOUT
    assert load_checkpoint(CheckpointManager(run, keep=3).latest())["global_step"] == interrupt


def test_ctrl_c_saves_stops_local_ray_and_resume_continues_without_it(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    run = artifacts / "runs" / "c"
    proc = _spawn(
        "train", *TINY, "--total-timesteps", "100000", "--run-name", "c",
        "--artifacts-dir", str(artifacts), "--ui", "plain",
    )  # fmt: skip
    try:
        _wait_until(lambda: _iterations(run) >= 2 or proc.poll() is not None, 240, "two iterations")
        ray_processes = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in p.name() for p in ray_processes)  # a local Ray of its own
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole group, Ray's too
        out, err = proc.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err
    assert "interrupted at step" in out and "mario resume c" in out
    _, alive = psutil.wait_procs(ray_processes, timeout=20)
    assert not alive, alive  # the actors and the Ray instance it started are gone
    interrupt = [r["step"] for r in _records(run) if r.get("kind") == "interrupt"]
    assert len(interrupt) == 1 and interrupt[0] >= 2 * ROLLOUT
    assert not (run / "run.lock").exists()

    resumed = run_mario(
        "resume", "c", "--artifacts-dir", str(artifacts), "--actors", "thread",
        "--vector-mode", "sync", "--total-timesteps", str(interrupt[0] + 2 * ROLLOUT),
        "--ui", "quiet",
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(CheckpointManager(run, keep=3).final_path)
    assert final["global_step"] == interrupt[0] + 2 * ROLLOUT
    assert final["config"]["train"]["actors"] == "thread"
