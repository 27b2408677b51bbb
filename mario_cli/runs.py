"""Runs on disk: ``artifacts/runs/<run>/`` and the ``artifacts/latest`` pointer.

``latest`` is a one-line text file naming the newest run (a symlink would not
survive every filesystem and copy tool).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from mario_cli.errors import MarioError

RUNS = "runs"
LATEST = "latest"
CHECKPOINTS = "checkpoints"
VIDEOS = "videos"


@dataclass(frozen=True)
class RunPaths:
    """The layout of one run folder; every module that reads or writes a run uses it."""

    root: Path

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunPaths | None:
        """The run a checkpoint file belongs to, or None if it lies outside a run."""
        folder = Path(checkpoint).parent
        return cls(folder.parent) if folder.name == CHECKPOINTS else None

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def evalpoints(self) -> Path:
        """Weights kept at ``mario bench learn``'s evaluation points."""
        return self.root / "evalpoints"

    @property
    def artifacts(self) -> Path:
        return self.root.parent.parent

    @property
    def lock(self) -> Path:
        """Holds the PID of the process training this run, while it trains."""
        return self.root / "run.lock"

    def acquire(self) -> None:
        if self.running_pid() is not None:
            raise MarioError(
                f"run {self.name} is being trained by process {self.running_pid()}; "
                "stop it first or pick another run"
            )
        self.lock.write_text(f"{os.getpid()}\n")

    def release(self) -> None:
        self.lock.unlink(missing_ok=True)

    def running_pid(self) -> int | None:
        try:
            pid = int(self.lock.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid


def default_run_name(algo: str, env_id: str) -> str:
    stage = re.sub(r"^SuperMarioBros-?|-v\d+$", "", env_id) or "game"
    return f"{algo}-{stage}-{time.strftime('%Y%m%d-%H%M%S')}"


def create_run(artifacts: Path, name: str) -> RunPaths:
    """A new run folder (a suffix keeps names unique) and the latest pointer to it."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise MarioError(f"run name {name!r} may use only letters, digits, '.', '_' and '-'")
    runs = artifacts / RUNS
    candidate, suffix = runs / name, 1
    while candidate.exists():
        suffix += 1
        candidate = runs / f"{name}-{suffix}"
    try:
        candidate.mkdir(parents=True)
        RunPaths(candidate).checkpoints.mkdir()
    except OSError as exc:
        raise MarioError(f"cannot create run folder {candidate}: {exc.strerror}") from None
    paths = RunPaths(candidate)
    mark_latest(paths)
    return paths


def mark_latest(paths: RunPaths) -> None:
    pointer = paths.artifacts / LATEST
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(paths.name + "\n")
    os.replace(tmp, pointer)


def latest_run(artifacts: Path) -> RunPaths | None:
    pointer = artifacts / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        if name and (artifacts / RUNS / name).is_dir():
            return RunPaths(artifacts / RUNS / name)
    runs = list_runs(artifacts)
    return runs[-1] if runs else None


def list_runs(artifacts: Path) -> list[RunPaths]:
    """Runs under ``artifacts``, oldest first (by folder time)."""
    folder = artifacts / RUNS
    if not folder.is_dir():
        return []
    dirs = [p for p in folder.iterdir() if p.is_dir()]
    return [RunPaths(p) for p in sorted(dirs, key=lambda p: p.stat().st_mtime)]


def resolve_run(reference: str | None, artifacts: Path) -> RunPaths:
    """A run from a name, a folder path, or (None) the latest run."""
    if reference is None:
        run = latest_run(artifacts)
        if run is None:
            raise MarioError(f"no runs under {artifacts}; start one with `mario train`")
        return run
    path = Path(reference)
    for candidate in (path, artifacts / RUNS / reference):
        if candidate.is_dir() and RunPaths(candidate).checkpoints.is_dir():
            return RunPaths(candidate)
    names = ", ".join(r.name for r in list_runs(artifacts)[-5:]) or "none"
    raise MarioError(
        f"no run {reference!r} under {artifacts / RUNS}; recent runs: {names} (see `mario runs`)"
    )


def videos_dir(artifacts: Path) -> Path:
    """Where ``mario record`` writes its videos by default."""
    return artifacts / VIDEOS
