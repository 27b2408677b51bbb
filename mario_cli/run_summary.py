"""What a run folder says about itself: status, progress, last metrics, checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mario_cli import metric_names as names
from mario_cli.metrics import read_records
from mario_cli.runs import RunPaths
from mario_cli.training.checkpoint import CheckpointManager


@dataclass
class RunSummary:
    name: str
    path: str
    algo: str | None
    env_id: str | None
    steps: int
    total_timesteps: int | None
    status: str  # running, finished, interrupted, failed, crashed, new
    ep_rew_mean: float | None
    avg_max_x_pos: float | None
    clear_rate: float | None
    best_checkpoint: str | None
    checkpoints: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise_run(run: RunPaths) -> RunSummary:
    records = read_records(run.metrics) if run.metrics.is_file() else []
    started = [r for r in records if r.get("type") == "RunStarted"]
    iterations = [r for r in records if r.get("type") == "IterationStats"]
    last_start = max(
        (i for i, r in enumerate(records) if r.get("type") == "RunStarted"), default=-1
    )
    finished = [r for r in records[last_start + 1 :] if r.get("type") == "RunFinished"]
    if run.running_pid() is not None:
        status = "running"
    elif finished:
        status = str(finished[-1].get("status", "finished"))
    elif started:
        status = "crashed"  # started, never said it finished, and nobody holds it
    else:
        status = "new"
    last = iterations[-1].get("metrics", {}) if iterations else {}
    begun = started[-1] if started else {}
    manager = CheckpointManager(run.root, keep=1_000_000)
    checkpoints = [{"step": step, "path": str(path)} for step, path in manager.list()]
    for special in (manager.best_path, manager.final_path):
        if special.is_file():
            checkpoints.append({"step": None, "path": str(special)})
    return RunSummary(
        name=run.name,
        path=str(run.root),
        algo=begun.get("algo"),
        env_id=begun.get("env_id"),
        steps=int(iterations[-1].get("step", 0)) if iterations else 0,
        total_timesteps=_int_or_none(begun.get("total_timesteps")),
        status=status,
        ep_rew_mean=last.get(names.ROLLOUT_EP_REW_MEAN),
        avg_max_x_pos=last.get(names.ROLLOUT_AVG_MAX_X_POS),
        clear_rate=last.get(names.ROLLOUT_CLEAR_RATE),
        best_checkpoint=str(manager.best_path) if manager.best_path.is_file() else None,
        checkpoints=checkpoints,
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
