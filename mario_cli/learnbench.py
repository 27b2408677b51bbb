"""``mario bench learn``: how long until the agent clears the stage, measured honestly.

Each seed trains a normal run (``mario plot``, ``runs`` and ``monitor`` work on it)
and keeps the policy's weights at every eval point. Only when that seed's training
has ended are those snapshots evaluated, from the stage start with ``mario eval``'s
start protocol, so evaluation steals no training time. Results are written after
every seed, so an interrupted benchmark keeps the seeds it finished.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mario_cli import metric_names as names
from mario_cli.config import MarioConfig
from mario_cli.errors import ConfigError, MarioError
from mario_cli.eval_protocol import check_noop_max, check_policy, start_protocol

BENCH_DIR = "bench"
RESULT_NAME = "result.json"
PLOT_NAME = "learn.png"
BUDGET_STOP = "bench learn budget reached"
# Milestones: the first eval point whose clear rate reaches each threshold.
MILESTONES = (("first_clear", 0.0, False), ("clear_50", 0.5, True), ("clear_80", 0.8, True))
DEFAULT_EVAL_POINTS = 6
# The column of what `mario eval` reports: greedy play of the run's best.pt at that moment.
BEST = "best"


@dataclass(frozen=True)
class Amount:
    """A training amount in wall-clock minutes or agent steps."""

    unit: str  # "minutes" or "steps"
    value: float

    def of(self, steps: int, minutes: float) -> float:
        return minutes if self.unit == "minutes" else float(steps)

    def describe(self) -> str:
        if self.unit == "minutes":
            return f"{self.value:g} min"
        return f"{int(self.value):,} steps"

    def to_dict(self) -> dict[str, float]:
        return {self.unit: self.value}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> Amount:
        ((unit, value),) = data.items()
        return cls(unit, float(value))


def parse_amount(text: str, flag: str = "--eval-every") -> Amount:
    """``5m`` / ``5min`` are minutes; ``50000`` / ``50k`` are agent steps."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(m|min|minutes|k|steps)?\s*", text.lower())
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(
            f"{flag} {text!r}: give minutes as e.g. 5m or agent steps as e.g. 50000 or 50k"
        )
    number, unit = float(match.group(1)), match.group(2) or ""
    if unit in ("m", "min", "minutes"):
        return Amount("minutes", number)
    return Amount("steps", number * 1000 if unit == "k" else number)


def make_budget(minutes: float | None, steps: int | None) -> Amount:
    if (minutes is None) == (steps is None):
        raise ConfigError("give one budget: --minutes M (wall clock) or --steps N (agent steps)")
    if minutes is not None:
        if minutes <= 0:
            raise ConfigError(f"--minutes {minutes:g}: must be positive")
        return Amount("minutes", float(minutes))
    if steps is None or steps < 1:
        raise ConfigError(f"--steps {steps}: must be at least 1")
    return Amount("steps", float(steps))


@dataclass
class BenchSettings:
    name: str
    budget: Amount
    eval_every: Amount
    seeds: list[int]
    eval_episodes: int
    policy: str
    noop_max: int
    eval_max_steps: int
    workers: int
    artifacts: Path

    @property
    def folder(self) -> Path:
        return self.artifacts / BENCH_DIR / self.name

    @property
    def policies(self) -> list[str]:
        return check_policy(self.policy)

    def check(self) -> None:
        check_policy(self.policy)
        check_noop_max(self.noop_max)
        if not self.seeds:
            raise ConfigError("--seeds must be at least 1")
        if self.eval_episodes < 1 or self.eval_max_steps < 1:
            raise ConfigError("--eval-episodes and --eval-max-steps must be at least 1")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise ConfigError(f"--name {self.name!r} may use only letters, digits, '.', '_', '-'")


class EvalPoints:
    """Decides, at each iteration, whether to keep a snapshot and whether to stop."""

    def __init__(self, budget: Amount, every: Amount, total_timesteps: int) -> None:
        self.budget, self.every, self.total = budget, every, total_timesteps
        self.taken = 0

    def due(self, steps: int, minutes: float) -> tuple[bool, bool]:
        """(keep a snapshot now, the budget is spent)."""
        spent = self.budget.of(steps, minutes) >= self.budget.value or steps >= self.total
        if spent:
            return True, True
        reached = self.every.of(steps, minutes) >= self.every.value * (self.taken + 1)
        return reached, False


# ------------------------------------------------------------------ training
@dataclass
class SeedTraining:
    seed: int
    run_name: str
    run_dir: str
    status: str  # "complete" (budget spent or total_timesteps reached) or "interrupted"
    points: list[dict[str, Any]]
    steps: int
    minutes: float


def seed_config(cfg: MarioConfig, seed: int, run_name: str) -> MarioConfig:
    data = cfg.to_dict()
    data["train"].update(seed=seed, run_name=run_name)
    data["ui"]["mode"] = "quiet"
    return MarioConfig.model_validate(data)


def train_seed(
    cfg: MarioConfig,
    settings: BenchSettings,
    seed: int,
    control: Any,
    sinks: list[Any],
    on_iteration: Callable[[int, float, dict[str, float]], None] | None = None,
) -> SeedTraining:
    """Train one seed until the budget is spent, keeping a snapshot at every eval point."""
    from mario_cli.training.trainer import Trainer

    run_name = f"{settings.name}-seed{seed}"
    points: list[dict[str, Any]] = []
    schedule = EvalPoints(settings.budget, settings.eval_every, cfg.train.total_timesteps)
    spent = False
    trainer: Trainer

    def after_iteration(steps: int, metrics: dict[str, float]) -> None:
        nonlocal spent
        minutes = float(metrics.get(names.TIME_TIME_ELAPSED, 0.0)) / 60
        keep, spent = schedule.due(steps, minutes)
        if keep:
            path = trainer.run.evalpoints / f"step_{steps:012d}.pt"
            trainer.save_weights(path)
            schedule.taken += 1
            point = {"steps": steps, "minutes": round(minutes, 3), "checkpoint": str(path)}
            points.append(point | keep_best(trainer, steps, path))
        if spent:
            control.request_stop(BUDGET_STOP)
        if on_iteration is not None:
            on_iteration(steps, minutes, metrics)

    trainer = Trainer(
        seed_config(cfg, seed, run_name), sinks, control, on_iteration=after_iteration
    )
    finished = trainer.train()
    if finished.status == "failed":
        raise MarioError(f"seed {seed} failed: {finished.reason}")
    last = points[-1] if points else {"steps": finished.step, "minutes": 0.0}
    return SeedTraining(
        seed=seed,
        run_name=trainer.run.name,
        run_dir=str(trainer.run.root),
        status="complete" if spent or finished.status == "finished" else "interrupted",
        points=points,
        steps=int(last["steps"]),
        minutes=float(last["minutes"]),
    )


def keep_best(trainer: Any, steps: int, weights: Path) -> dict[str, Any]:
    """What ``mario eval`` of this run would play now: a copy of best.pt (else the
    current weights), and the agent step its weights are from."""
    from mario_cli.training.checkpoint import load_checkpoint, save_checkpoint

    best = trainer.checkpoints.best_path
    if not best.is_file():
        return {"best_checkpoint": str(weights), "best_step": steps}
    state = load_checkpoint(best)
    copy = save_checkpoint(trainer.run.evalpoints / f"best_at_{steps:012d}.pt", state)
    return {"best_checkpoint": str(copy), "best_step": int(state.get("global_step", steps))}


# ---------------------------------------------------------------- evaluation
def evaluate_points(
    training: SeedTraining,
    settings: BenchSettings,
    env_overrides: dict[str, Any] | None = None,
    on_episode: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Each snapshot's clear rate and mean max x, per policy, from the stage start; and,
    as the ``best`` column, greedy play of the best.pt of that moment (``mario eval``)."""
    from mario_cli.evaluation import episode_jobs, run_episodes, summarise

    overrides = dict(env_overrides or {})
    groups: list[tuple[int, str, int]] = []  # (point, column, jobs)
    jobs = []
    for i, point in enumerate(training.points):
        played = [(policy, point["checkpoint"]) for policy in settings.policies]
        if "best_checkpoint" in point:
            played.append((BEST, point["best_checkpoint"]))
        for column, checkpoint in played:
            policy = "greedy" if column == BEST else column
            jobs += episode_jobs(
                Path(checkpoint),
                settings.eval_episodes,
                [policy],
                settings.eval_max_steps,
                0,
                settings.noop_max,
                overrides,
            )
            groups.append((i, column, settings.eval_episodes))
    total = len(jobs)
    workers = min(settings.workers, total)
    episodes = run_episodes(
        jobs, workers, (lambda done: on_episode(done, total)) if on_episode else None
    )
    evaluated = [
        {"steps": point["steps"], "minutes": point["minutes"]} for point in training.points
    ]
    offset = 0
    for i, column, count in groups:
        summary = summarise(episodes[offset : offset + count])
        offset += count
        evaluated[i][column] = {
            "clear_rate": summary["clear_rate"],
            "avg_max_x_pos": round(summary["avg_max_x_pos"], 1),
            "avg_reward": round(summary["avg_reward"], 3),
        }
    for entry, point in zip(evaluated, training.points, strict=True):
        entry["checkpoint"] = point["checkpoint"]
        if "best_checkpoint" in point:
            entry[BEST]["step"] = point["best_step"]
            entry[BEST]["checkpoint"] = point["best_checkpoint"]
    return evaluated


def milestones(points: list[dict[str, Any]], policies: Iterable[str]) -> dict[str, Any]:
    """Per policy: minutes and steps at the first eval point reaching each clear rate."""
    found: dict[str, Any] = {}
    for policy in policies:
        found[policy] = {}
        for name, threshold, inclusive in MILESTONES:
            hit = None
            for point in points:
                rate = point[policy]["clear_rate"]
                if rate >= threshold if inclusive else rate > threshold:
                    hit = {"minutes": point["minutes"], "steps": point["steps"]}
                    break
            found[policy][name] = hit
    return found


def _median(values: list[float]) -> float | None:
    """The median, where a not-reached milestone counts as infinitely late."""
    if not values:
        return None
    middle = statistics.median(values)
    return None if math.isinf(middle) else middle


def median_over_seeds(seeds: list[dict[str, Any]], policies: list[str]) -> dict[str, Any]:
    """Eval point i's medians over the seeds that have point i; milestones' medians."""
    longest = max((len(s["points"]) for s in seeds), default=0)
    points = []
    for i in range(longest):
        present = [s["points"][i] for s in seeds if len(s["points"]) > i]
        entry: dict[str, Any] = {
            "seeds": len(present),
            "minutes": round(statistics.median(p["minutes"] for p in present), 3),
            "steps": int(statistics.median(p["steps"] for p in present)),
        }
        for policy in policies:
            entry[policy] = {
                key: statistics.median(p[policy][key] for p in present)
                for key in ("clear_rate", "avg_max_x_pos", "avg_reward")
            }
        points.append(entry)
    reached: dict[str, Any] = {}
    for policy in policies:
        reached[policy] = {}
        for name, _, _ in MILESTONES:
            hits = [s["milestones"][policy][name] for s in seeds]
            reached[policy][name] = {
                unit: _median([math.inf if h is None else h[unit] for h in hits])
                for unit in ("minutes", "steps")
            }
            if reached[policy][name]["minutes"] is None:
                reached[policy][name] = None
    return {"points": points, "milestones": reached}


def training_of(seed: dict[str, Any]) -> SeedTraining:
    """A finished seed of a result as ``evaluate_points`` takes it: its kept snapshots."""
    points = []
    for point in seed["points"]:
        kept = {key: point[key] for key in ("steps", "minutes", "checkpoint")}
        if BEST in point and "checkpoint" in point[BEST]:
            kept |= {"best_checkpoint": point[BEST]["checkpoint"], "best_step": point[BEST]["step"]}
        points.append(kept)
    return SeedTraining(
        seed=seed["seed"],
        run_name=seed["run"],
        run_dir=seed["run_dir"],
        status=seed["status"],
        points=points,
        steps=seed["steps"],
        minutes=seed["minutes"],
    )


def trainings_of(result: dict[str, Any]) -> list[SeedTraining]:
    """Every finished seed of a result as ``evaluate_points`` takes it, or one MarioError
    naming the field a hand-edited or truncated result.json lacks."""
    try:
        return [training_of(seed) for seed in result["seeds"]]
    except (KeyError, TypeError) as exc:
        raise MarioError(
            f"{result.get('name', 'the result')} is not a complete bench-learn result "
            f"(a seed or eval point lacks {exc}); train it again with `mario bench learn`"
        ) from None


def missing_snapshots(trainings: list[SeedTraining]) -> list[str]:
    """The snapshot files these seeds' eval points name that are no longer there."""
    named = [
        path
        for training in trainings
        for point in training.points
        for path in (point["checkpoint"], point.get("best_checkpoint"))
        if path is not None
    ]
    return [path for path in named if not Path(path).is_file()]


def evaluated_again(earlier: dict[str, Any], settings: BenchSettings) -> dict[str, Any]:
    """A new result with ``earlier``'s training and no seeds yet, to be evaluated under
    ``settings``; it names where it came from and the load while it is evaluated."""
    result = new_result(settings, earlier["env_id"], earlier["config"], earlier["variant"])
    result |= {key: earlier[key] for key in ("budget", "eval_every")}
    result["machine"] = dict(earlier["machine"])  # the load while it trained
    result["evaluated_again"] = {
        "from": earlier["name"],
        "earlier_eval": earlier["eval"],
        "loadavg_start": list(os.getloadavg()),
    }
    return result


# ------------------------------------------------------------------- results
def new_result(
    settings: BenchSettings, env_id: str, config: dict[str, Any], variant: dict[str, Any]
) -> dict:
    return {
        "name": settings.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "env_id": env_id,
        "budget": settings.budget.to_dict(),
        "eval_every": settings.eval_every.to_dict(),
        "eval": {
            "episodes": settings.eval_episodes,
            "policy": settings.policy,
            "max_steps": settings.eval_max_steps,
            "start": start_protocol(settings.noop_max, 0),
            "after_training": True,
        },
        "variant": variant,
        "config": config,
        "machine": {"cpu_count": os.cpu_count(), "loadavg_start": list(os.getloadavg())},
        "seeds": [],
        "median": {"points": [], "milestones": {}},
        "interrupted": False,
        "plot": None,
    }


def add_seed(
    result: dict[str, Any],
    training: SeedTraining,
    points: list[dict[str, Any]],
    policies: list[str],
) -> None:
    seconds = training.minutes * 60
    columns = point_columns(points, policies)
    result["seeds"].append(
        {
            "seed": training.seed,
            "run": training.run_name,
            "run_dir": training.run_dir,
            "status": training.status,
            "steps": training.steps,
            "minutes": training.minutes,
            "steps_per_second": round(training.steps / seconds, 1) if seconds > 0 else None,
            "points": points,
            "milestones": milestones(points, columns),
        }
    )
    result["median"] = median_over_seeds(result["seeds"], result_columns(result))


def write_result(result: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESULT_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


def load_result(reference: str, artifacts: Path) -> dict[str, Any]:
    """A bench-learn result from its name, its folder or its result.json."""
    path = Path(reference)
    candidates = [path, path / RESULT_NAME, artifacts / BENCH_DIR / reference / RESULT_NAME]
    for candidate in candidates:
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, ValueError) as exc:
                raise MarioError(f"{candidate} is not a bench-learn result ({exc})") from None
            if not isinstance(data, dict) or "seeds" not in data or "median" not in data:
                raise MarioError(f"{candidate} is not a bench-learn result (no seeds/median)")
            return data
    known = sorted(p.name for p in (artifacts / BENCH_DIR).glob("*") if p.is_dir())
    listed = ", ".join(known[-8:]) or "none"
    raise MarioError(
        f"no bench-learn result {reference!r} (looked in {artifacts / BENCH_DIR}); known: {listed}"
    )


def point_columns(points: list[dict[str, Any]], policies: Iterable[str]) -> list[str]:
    """The policies evaluated at every point, and ``best`` where every point has it."""
    columns = list(policies)
    return [*columns, BEST] if points and all(BEST in p for p in points) else columns


def result_columns(result: dict[str, Any]) -> list[str]:
    """The columns every seed of a result has (results before ``best`` have none)."""
    policies = check_policy(result["eval"]["policy"])
    seeds = result["seeds"]
    if seeds and all(BEST in point_columns(s["points"], policies) for s in seeds):
        return [*policies, BEST]
    return policies


# --------------------------------------------------------------------- plots
CURVE_LABELS = ("wall-clock minutes", "agent steps", "wall-clock minutes")


def _curve_panels() -> tuple[Any, Any, list[str]]:
    """A figure of three panels (clear rate by minutes, by steps; max x by minutes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    return fig, axes, plt.rcParams["axes.prop_cycle"].by_key()["color"]


LINE_STYLES = {"greedy": "-", "stochastic": "--", BEST: ":"}


def _plot_curve(axes: Any, points: list[dict[str, Any]], policy: str, **style: Any) -> None:
    minutes = [p["minutes"] for p in points]
    rates = [p[policy]["clear_rate"] for p in points]
    style = {"linestyle": LINE_STYLES[policy], "marker": "o", **style}
    axes[0].plot(minutes, rates, **style)
    axes[1].plot([p["steps"] for p in points], rates, **style)
    axes[2].plot(minutes, [p[policy]["avg_max_x_pos"] for p in points], **style)


def _label(column: str) -> str:
    return "best.pt greedy" if column == BEST else column


def _finish_panels(axes: Any, titles: tuple[str, str, str]) -> None:
    for ax, title, xlabel in zip(axes, titles, CURVE_LABELS, strict=True):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.03, 1.03)
    axes[1].set_ylim(-0.03, 1.03)
    axes[0].legend(fontsize=7)


def plot_seeds(result: dict[str, Any], output: Path) -> Path:
    """Clear rate against minutes and steps, and mean max x: one line per seed and policy."""
    from mario_cli.plotting import save_figure

    fig, axes, colours = _curve_panels()
    for k, seed in enumerate(result["seeds"]):
        for policy in result_columns(result):
            label = f"seed {seed['seed']} {_label(policy)}"
            _plot_curve(axes, seed["points"], policy, color=colours[k % len(colours)], label=label)
    _finish_panels(axes, ("clear rate vs minutes", "clear rate vs agent steps", "mean max x"))
    fig.suptitle(f"mario bench learn: {result['name']} ({result['env_id']})")
    return save_figure(fig, output)


def plot_compare(results: list[dict[str, Any]], output: Path) -> Path:
    """Median clear rate against minutes and steps: one line per result and policy."""
    from mario_cli.plotting import save_figure

    fig, axes, colours = _curve_panels()
    for k, result in enumerate(results):
        for policy in result_columns(result):
            label = f"{result['name']} {_label(policy)}"
            colour = colours[k % len(colours)]
            _plot_curve(axes, result["median"]["points"], policy, color=colour, label=label)
    _finish_panels(axes, ("median clear rate vs minutes", "vs agent steps", "median mean max x"))
    return save_figure(fig, output)
