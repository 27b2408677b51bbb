"""``mario tune``: an Optuna search over the config, resumable and shareable."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.table import Table

from mario_cli.cli.console import console
from mario_cli.cli.options import TRAIN_SECTIONS, config_options, config_path_option


@config_options((*TRAIN_SECTIONS, "tune"))
def tune(
    config: Path | None = config_path_option(),
    export: Path | None = typer.Option(
        None, "--export", help="Write the best values as a mario.toml fragment."
    ),
    overrides: dict | None = None,
) -> None:
    """Search hyperparameters: each trial is a short real training run.

    The search space is \\[tune.space] in mario.toml (default: learning rate, entropy,
    gamma, GAE lambda, clip range, n_steps, hidden size, residual blocks, recurrent core).
    The same --study-name and --storage continue a study; several processes pointed at
    one storage share it.
    """
    import optuna

    from mario_cli.config import load_config
    from mario_cli.training.trainer import TrainingControl
    from mario_cli.tuning import (
        DEFAULT_SPACE,
        default_storage,
        export_best,
        make_objective,
        make_pruner,
        make_sampler,
        open_storage,
        param_importances,
        validate_space,
    )

    cfg = load_config(config, overrides)
    tune_cfg = cfg.tune
    space = validate_space(tune_cfg.space or DEFAULT_SPACE)
    url = tune_cfg.storage or default_storage(cfg.train.artifacts_dir, tune_cfg.study_name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=tune_cfg.study_name,
        storage=open_storage(url),
        load_if_exists=True,
        direction="maximize",
        sampler=make_sampler(tune_cfg.sampler, cfg.train.seed),
        pruner=make_pruner(tune_cfg.pruner, tune_cfg.timesteps_per_trial),
    )
    if tune_cfg.total_trials or study.trials:
        # Workers sharing a study (or a study continued) must not replay the same draws.
        study.sampler = make_sampler(tune_cfg.sampler, (cfg.train.seed + os.getpid()) % 2**32)
    finished_states = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    )
    if (
        tune_cfg.total_trials
        and len(study.get_trials(states=finished_states)) >= tune_cfg.total_trials
    ):
        console.print(f"study {study.study_name!r} already has {tune_cfg.total_trials} trials")
        _print_result(study, space, export, export_best, param_importances)
        return

    controls: set[Any] = set()
    lock = threading.Lock()
    stopping = threading.Event()
    rows: list[tuple[str, ...]] = []
    started: dict[int, float] = {}

    def new_control() -> TrainingControl:
        control = TrainingControl()
        with lock:
            controls.add(control)
        if stopping.is_set():
            control.request_stop("Ctrl-C")
        return control

    def on_trial_start(trial: Any) -> None:
        started[trial.number] = time.monotonic()

    def table() -> Table:
        done = len(study.get_trials(states=finished_states))
        view = Table(title=f"study {study.study_name!r}: {done} finished trials ({url})")
        for column in ("trial", "state", "value", "params", "minutes"):
            view.add_column(column, overflow="fold")
        for row in rows[-15:]:
            view.add_row(*row)
        return view

    def on_trial_end(study: Any, trial: Any) -> None:
        minutes = (time.monotonic() - started.get(trial.number, time.monotonic())) / 60
        value = f"{trial.value:.1f}" if trial.value is not None else "-"
        params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in trial.params.items())
        rows.append((str(trial.number), trial.state.name.lower(), value, params, f"{minutes:.1f}"))
        live.update(table())
        if stopping.is_set():
            study.stop()

    callbacks: list[Any] = [on_trial_end]
    if tune_cfg.total_trials:
        callbacks.append(optuna.study.MaxTrialsCallback(tune_cfg.total_trials, finished_states))

    first: list[float] = []

    def on_signal(signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if stopping.is_set():
            if signum == signal.SIGINT and first and now - first[0] > 1.0:
                raise KeyboardInterrupt
            return
        first.append(now)
        stopping.set()
        with lock:
            for control in controls:
                control.request_stop("Ctrl-C")
        console.print("[yellow]stopping: the running trials save and end; the study is kept[/]")

    objective = make_objective(cfg, space, study.study_name, new_control, on_trial_start)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Live(table(), console=console, refresh_per_second=2) as live:
            study.optimize(
                objective,
                n_trials=None if tune_cfg.total_trials else tune_cfg.trials,
                n_jobs=tune_cfg.n_jobs,
                catch=(Exception,),  # a crashed trial is recorded as failed; the study goes on
                callbacks=callbacks,
            )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _print_result(study, space, export, export_best, param_importances)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _print_result(study: Any, space: dict, export: Path | None, export_best, importances) -> None:
    completed = [t for t in study.trials if t.value is not None]
    if not completed:
        console.print("no completed trial yet; run more trials or a longer --timesteps-per-trial")
        return
    best = study.best_trial
    console.print(
        f"[bold green]best trial {best.number}[/]: {study.best_value:.2f} "
        f"(run {best.user_attrs.get('run_name', '?')})",
        highlight=False,
    )
    params = Table(title="best parameters")
    params.add_column("key")
    params.add_column("value", justify="right")
    for key, value in best.params.items():
        params.add_row(key, _short(value))
    console.print(params)
    ranking = importances(study)
    if ranking:
        view = Table(title="parameter importance (PED-ANOVA)")
        view.add_column("key")
        view.add_column("importance", justify="right")
        for key, value in ranking.items():
            view.add_row(key, f"{value:.3f}")
        console.print(view)
    if export is not None:
        path = export_best(study, space, export)
        console.print(f"wrote {path}: train with `mario train --config {path}`", highlight=False)
