"""What a user relies on when things go wrong, on the real emulator and real processes.

kill -9 in the middle of a run, an env worker that dies under PPO and IMPALA, and a
checkpoint that cannot be written: each ends in one clear line (or none, for kill -9),
leaves the run folder consistent and resumable.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mario_cli.metrics import read_records
from mario_cli.run_summary import summarise_run
from mario_cli.runs import RunPaths
from mario_cli.training.checkpoint import CheckpointManager, load_checkpoint
from tests.conftest import run_mario

TINY = (
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
    "--torch-threads",
    "1",
    "--total-timesteps",
    "100000",
)
ROLLOUT = 32  # 2 envs x 16 steps


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start ``mario ARGS`` in its own session; whatever is left of it is killed at the end."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARIO_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "mario_cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return read_records(path) if path.is_file() else []


def iteration_steps(run: Path) -> list[int]:
    return [r["step"] for r in records(run) if r["type"] == "IterationStats"]


def saved(run: Path, kind: str) -> list[int]:
    return [r["step"] for r in records(run) if r["type"] == "CheckpointSaved" and r["kind"] == kind]


def env_workers(pid: int) -> list[psutil.Process]:
    """The env worker processes of a trainer, in start order (worker 0 first).

    Workers are forked by multiprocessing's forkserver, itself a child of the trainer.
    """
    trainer = psutil.Process(pid)
    grandchildren = [p for p in trainer.children(recursive=True) if p.ppid() != pid]
    return sorted(grandchildren, key=lambda p: p.pid)


def wait_blocked(pid: int, timeout: float = 60) -> None:
    """Until the process uses no CPU for half a second (it waits on a stopped worker)."""
    process = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    while True:
        before = sum(process.cpu_times()[:2])
        time.sleep(0.5)
        if sum(process.cpu_times()[:2]) - before < 0.03:
            return
        assert time.monotonic() < deadline, "the trainer never blocked on the stopped worker"


def one_line(stderr: str, stdout: str) -> str:
    """The error line on stderr; no traceback anywhere."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr + stdout, stderr + stdout
    assert len(lines) == 1, stderr
    return lines[0]


def tensorboard_steps(run: Path, tag: str = "time/total_timesteps") -> list[int]:
    accumulator = EventAccumulator(str(run / "tb"))
    accumulator.Reload()
    return [int(event.step) for event in accumulator.Scalars(tag)]


# ----------------------------------------------------------------- kill -9
def test_kill_9_mid_run_is_crashed_and_resumes_on_one_step_axis(tmp_path: Path, spawn) -> None:
    artifacts = tmp_path / "artifacts"
    run = artifacts / "runs" / "k9"
    checkpoint_step = 3 * ROLLOUT
    proc = spawn(
        "train", "--run-name", "k9", *TINY, "--save-freq", str(checkpoint_step),
        "--artifacts-dir", str(artifacts),
    )  # fmt: skip
    # Past the periodic checkpoint plus two iterations, before the next checkpoint.
    wait_until(
        lambda: max(iteration_steps(run), default=0) >= checkpoint_step + 2 * ROLLOUT,
        180,
        "two iterations past the checkpoint",
    )
    processes = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)  # the trainer only, as `kill -9 PID` does
    proc.wait(timeout=10)
    _, alive = psutil.wait_procs(processes, timeout=20)
    assert not alive, f"processes left behind by the killed trainer: {alive}"

    assert saved(run, "periodic") == [checkpoint_step]
    assert max(iteration_steps(run)) > checkpoint_step  # logged past the checkpoint
    assert (run / "run.lock").read_text().strip() == str(proc.pid)  # a stale lock
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"type": "IterationStats", "step": 99999, "iteration": 7, "metr')

    listing = run_mario("runs", "--json", "--artifacts-dir", str(artifacts))
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout)[0]["status"] == "crashed"

    end = checkpoint_step + 2 * ROLLOUT
    resumed = run_mario(
        "resume", "k9", "--artifacts-dir", str(artifacts), "--total-timesteps", str(end),
        "--ui", "quiet",
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert not (run / "run.lock").exists()

    lines = (run / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]  # the cut line is gone: every line parses
    starts = [i for i, r in enumerate(logged) if r["type"] == "RunStarted"]
    assert len(starts) == 2 and logged[starts[1]]["start_step"] == checkpoint_step
    assert all(r.get("step", 0) <= checkpoint_step for r in logged[: starts[1]])
    steps = iteration_steps(run)
    assert steps == list(range(ROLLOUT, end + 1, ROLLOUT))  # strictly rising, no repeats
    assert logged[-1]["type"] == "RunFinished" and logged[-1]["status"] == "finished"
    # TensorBoard: what the killed session logged up to its checkpoint, then the resumed one.
    assert tensorboard_steps(run) == steps


# ------------------------------------------------------- a dead env worker
@pytest.mark.parametrize("algo", ["ppo", "impala"])
def test_a_killed_env_worker_ends_the_run_with_one_line_and_it_resumes(
    tmp_path: Path, spawn, algo: str
) -> None:
    artifacts = tmp_path / "artifacts"
    run = artifacts / "runs" / "w"
    proc = spawn(
        "train", "--run-name", "w", "--algo", algo, *TINY, "--n-workers", "2",
        "--artifacts-dir", str(artifacts),
    )  # fmt: skip
    wait_until(lambda: len(iteration_steps(run)) >= 1, 180, "the first iteration")
    workers = env_workers(proc.pid)
    assert len(workers) == 2
    victim = workers[1]
    # Stopped first, so that the kill lands while collection waits on this worker
    # (PPO's collect phase; IMPALA's actor thread).
    victim.send_signal(signal.SIGSTOP)
    wait_blocked(proc.pid)
    victim.kill()
    start = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 30  # no hang
    assert proc.returncode == 1, err
    line = one_line(err, out)
    assert "env worker 1 (envs 1-1, SuperMarioBros-1-1-v0) failed: exited with code -9" in line
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive  # the other worker was closed too
    assert not (run / "run.lock").exists()

    finished = [r for r in records(run) if r["type"] == "RunFinished"]
    assert len(finished) == 1 and finished[0]["status"] == "failed"
    assert "env worker 1" in finished[0]["reason"]
    crash = saved(run, "crash")
    assert crash == [finished[0]["step"]] and crash[0] >= ROLLOUT  # what it learned is kept
    assert summarise_run(RunPaths(run)).status == "failed"

    resumed = run_mario(
        "resume", "w", "--artifacts-dir", str(artifacts), "--vector-mode", "sync",
        "--total-timesteps", str(crash[0] + ROLLOUT), "--ui", "quiet",
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    final = CheckpointManager(run, keep=3).final_path
    assert load_checkpoint(final)["global_step"] == crash[0] + ROLLOUT


# ------------------------------------------------------------ disk trouble
def test_a_checkpoint_that_cannot_be_written_keeps_the_last_one_and_says_so(
    tmp_path: Path, spawn
) -> None:
    artifacts = tmp_path / "artifacts"
    run = artifacts / "runs" / "disk"
    proc = spawn(
        "train", "--run-name", "disk", *TINY, "--save-freq", str(ROLLOUT),
        "--artifacts-dir", str(artifacts),
    )  # fmt: skip
    wait_until(lambda: len(saved(run, "periodic")) >= 1, 180, "a first periodic checkpoint")
    # The disk fills up mid-run: from now on no file of the trainer may grow past 2 MB
    # (a checkpoint is ~20 MB; metrics.jsonl and TensorBoard stay far below). This works
    # for root too, whom a read-only folder would not stop.
    limit = 2_000_000
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    line = one_line(err, out)
    assert "cannot write checkpoint" in line and "(File too large)" in line
    assert "the checkpoints already saved are intact" in line

    last = saved(run, "periodic")[-1]
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("ckpt_")) == []
    newest = CheckpointManager(run, keep=3).latest()
    assert newest == folder / f"ckpt_{last:012d}.pt"
    state = load_checkpoint(newest)  # whole, not a half-written file
    assert state["global_step"] == last and "optimiser" in state
    assert not (run / "run.lock").exists()
    finished = [r for r in records(run) if r["type"] == "RunFinished"]
    assert finished[-1]["status"] == "failed" and finished[-1]["checkpoint"] == str(newest)


# -------------------------------------------------------- tune interrupted
TUNE_TOML = """
[env]
n_envs = 2
vector_mode = "sync"
[env.reward]
no_progress_cut_steps = 3
[algo]
n_steps = 16
batch_size = 32
n_epochs = 1
[train]
torch_threads = 1
[tune]
timesteps_per_trial = 100000
[tune.space]
"algo.learning_rate" = { type = "float", low = 1e-5, high = 1e-3, log = true }
"""


def test_tune_interrupted_mid_trial_records_it_and_the_study_goes_on(tmp_path: Path, spawn) -> None:
    import optuna

    from mario_cli.tuning import open_storage

    config = tmp_path / "tune.toml"
    config.write_text(TUNE_TOML)
    artifacts = tmp_path / "artifacts"
    common = ("--config", str(config), "--study-name", "cut", "--artifacts-dir", str(artifacts))
    proc = spawn("tune", *common, "--trials", "3")
    trial_run = artifacts / "runs" / "cut-trial-0"
    wait_until(lambda: len(iteration_steps(trial_run)) >= 1, 180, "the first trial to train")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "the running trials save and end" in out

    storage = open_storage(f"sqlite:///{artifacts / 'tune' / 'cut.db'}")
    (trial,) = optuna.load_study(study_name="cut", storage=storage).trials
    # Ended early on request, as a pruned trial: what it reported stays in the study.
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["reason"] == "Ctrl-C"
    assert trial.user_attrs["run_name"] == "cut-trial-0"
    checkpoint = Path(trial.user_attrs["checkpoint"])
    assert checkpoint.parent == trial_run / "checkpoints"
    assert saved(trial_run, "interrupt") == [load_checkpoint(checkpoint)["global_step"]]

    again = run_mario("tune", *common, "--trials", "1", "--timesteps-per-trial", "160")
    assert again.returncode == 0, again.stderr
    trials = optuna.load_study(study_name="cut", storage=storage).trials
    assert [t.number for t in trials] == [0, 1]
    assert trials[1].state == optuna.trial.TrialState.COMPLETE, again.stderr
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
