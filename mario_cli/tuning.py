"""Hyperparameter search with Optuna: each trial is a real short `mario train` run.

Trials report their metric after every iteration so the pruner can stop bad ones
early; each trial keeps its run folder (``<study>-trial-<n>``) for `mario plot`.
A study lives in Optuna storage (SQLite by default, or an RDB URL, or a journal
file), so it resumes with the same name and storage and can be shared by several
`mario tune` processes, on one machine or many.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mario_cli import metric_names as names
from mario_cli.config import MarioConfig, key_path, notify, renamed_key, set_by_path
from mario_cli.errors import ConfigError, MarioError

# Used when mario.toml has no [tune.space].
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "algo.learning_rate": {"type": "float", "low": 5e-5, "high": 1e-3, "log": True},
    "algo.ent_coef": {"type": "float", "low": 1e-4, "high": 0.05, "log": True},
    "algo.gamma": {"type": "float", "low": 0.85, "high": 0.99},
    "algo.gae_lambda": {"type": "float", "low": 0.8, "high": 1.0},
    "algo.clip_range": {"type": "float", "low": 0.1, "high": 0.3},
    "algo.n_steps": {"type": "categorical", "choices": [64, 128, 256, 512]},
    "model.hidden_size": {"type": "categorical", "choices": [256, 512]},
    "model.impala.blocks": {"type": "int", "low": 1, "high": 3},
    "model.recurrent": {"type": "categorical", "choices": ["none", "gru", "lstm"]},
}
METRICS = {"avg_max_x_pos": names.ROLLOUT_AVG_MAX_X_POS, "ep_rew_mean": names.ROLLOUT_EP_REW_MEAN}


def validate_space(space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Check every entry: a real config key and a well-formed distribution."""
    for key, dist in space.items():
        if key_path(key) is None:
            raise ConfigError(
                f"[tune.space] key {key!r} is not a config key "
                "(section.key or section.component.key)"
            )
        new = renamed_key(key)
        if new is not None:
            notify(f"[tune.space] {key} is now {new}; the old key still works in this release")
        kind = dist.get("type")
        if kind in ("float", "int"):
            if "low" not in dist or "high" not in dist or dist["low"] >= dist["high"]:
                raise ConfigError(f"[tune.space] {key}: {kind} needs low < high")
            if dist.get("log") and dist["low"] <= 0:
                raise ConfigError(f"[tune.space] {key}: a log range needs low > 0")
        elif kind == "categorical":
            if not dist.get("choices"):
                raise ConfigError(f"[tune.space] {key}: categorical needs a non-empty choices list")
        else:
            raise ConfigError(f"[tune.space] {key}: type {kind!r} is not float, int or categorical")
    return space


def suggest(trial: Any, key: str, dist: dict[str, Any]) -> Any:
    kind = dist["type"]
    if kind == "float":
        return trial.suggest_float(key, dist["low"], dist["high"], log=bool(dist.get("log")))
    if kind == "int":
        return trial.suggest_int(key, dist["low"], dist["high"], log=bool(dist.get("log")))
    return trial.suggest_categorical(key, dist["choices"])


def default_storage(artifacts: Path, study_name: str) -> str:
    folder = artifacts / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / study_name}.db"


def open_storage(url: str) -> Any:
    """An Optuna storage from a URL; ``journal:PATH`` is a journal file (shared disks)."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:
        raise MarioError(f"cannot open Optuna storage {url!r}: {exc}") from None


def make_sampler(name: str, seed: int) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def make_pruner(name: str, max_resource: int) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource)
    return optuna.pruners.NopPruner()


class TrialFailed(MarioError):
    """A trial that ended without a result (NaN loss, crash, interruption)."""


def make_objective(
    base: MarioConfig,
    space: dict[str, dict[str, Any]],
    study_name: str,
    control_factory: Callable[[], Any],
    on_trial_start: Callable[[Any], None] = lambda _: None,
) -> Callable[[Any], float]:
    """The objective: train a copy of ``base`` with the trial's values, return its metric."""
    metric_key = METRICS[base.tune.metric]

    def objective(trial: Any) -> float:
        import optuna

        from mario_cli.sinks.tensorboard import TensorBoardSink
        from mario_cli.training.trainer import Trainer

        cfg = base.model_copy(deep=True)
        for key, dist in space.items():
            set_by_path(cfg, key, suggest(trial, key, dist))
        cfg.train.total_timesteps = base.tune.timesteps_per_trial
        cfg.train.run_name = f"{study_name}-trial-{trial.number}"
        cfg.ui.mode = "quiet"
        control = control_factory()
        on_trial_start(trial)
        trial.set_user_attr("run_name", cfg.train.run_name)
        reports = {"last": None}

        def report(step: int, metrics: dict[str, float]) -> None:
            value = metrics.get(metric_key)
            if value is None:
                return
            reports["last"] = value
            trial.report(value, step)
            if trial.should_prune():
                control.request_stop("pruned")

        sinks = [TensorBoardSink()]
        trainer = Trainer(cfg, sinks, control, on_iteration=report)
        try:
            finished = trainer.train()
        finally:
            for sink in sinks:
                sink.close()
        trial.set_user_attr("run_dir", str(trainer.run.root) if trainer.run else "")
        # An interrupted or pruned trial's checkpoint resumes with `mario resume`.
        trial.set_user_attr("checkpoint", finished.checkpoint)
        if control.stop_reason == "pruned":
            raise optuna.TrialPruned()
        if finished.status == "interrupted":
            # Ctrl-C: the values it reported are real, so it ends as pruned (a failure
            # would discard them, and Optuna would print a traceback for it).
            trial.set_user_attr("reason", finished.reason)
            raise optuna.TrialPruned(f"interrupted: {finished.reason}")
        if finished.status != "finished":
            trial.set_user_attr("reason", finished.reason)
            raise TrialFailed(f"trial {trial.number} {finished.status}: {finished.reason}")
        value = finished.summary.get(metric_key, reports["last"])
        if value is None or not math.isfinite(value):
            raise TrialFailed(f"trial {trial.number} logged no {metric_key} (too few steps?)")
        return float(value)

    return objective


def export_best(study: Any, space: dict[str, dict[str, Any]], path: Path) -> Path:
    """A mario.toml fragment with the best trial's values (`mario train --config PATH`)."""
    from mario_cli.config import to_toml

    best = study.best_trial.params
    data: dict[str, Any] = {}
    for key in space:
        where = key_path(key)
        if key in best and where is not None:
            node = data
            for part in where[:-1]:
                node = node.setdefault(part, {})
            node[where[-1]] = best[key]
    header = (
        f"# best trial {study.best_trial.number} of study {study.study_name!r}: "
        f"value {study.best_value:.4g} ({time.strftime('%Y-%m-%d %H:%M')})\n"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + to_toml(data))
    except OSError as exc:
        raise MarioError(f"cannot write {path}: {exc.strerror}") from None
    return path


def param_importances(study: Any) -> dict[str, float]:
    """PED-ANOVA importances (no extra dependencies); empty when too few trials."""
    import optuna

    try:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except Exception:
        return {}
