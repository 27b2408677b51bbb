"""``mario bench``: measure the env pipeline (and, later, training) on this machine."""

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mario_cli import metric_names as names
from mario_cli.cli.console import console, err_console
from mario_cli.cli.options import config_options, config_path_option
from mario_cli.config import chosen_settings, load_config
from mario_cli.errors import ConfigError, MarioError
from mario_cli.eval_protocol import DEFAULT_NOOP_MAX

app = typer.Typer(help="Measure throughput and learning on this machine.", no_args_is_help=True)


@app.command("env")
def env(
    n_envs: int = typer.Option(2, "--n-envs", help="Envs in the vector env measurement."),
    steps: int = typer.Option(500, "--steps", help="Agent steps per measurement."),
    n_workers: int | None = typer.Option(
        None, "--n-workers", help="Worker processes (default: one per core)."
    ),
    env_id: str | None = typer.Option(None, "--env-id", help="Env id to measure."),
    rounds: int = typer.Option(
        1, "--rounds", help="Alternate the measurements N times; figures are the means."
    ),
    config: Path | None = config_path_option(),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Raw emulator frames/s, one env's agent steps/s, and N envs' steps/s.

    N envs step in lockstep (every env, then wait for all); their scaling is split into
    each env's speed beside the others and the workers' share of time stepping. The
    configured envs are also measured in env.step_groups groups, double-buffered (the
    trainer acting), and the N envs stepped a whole rollout per command (the workers
    acting).
    """
    from mario_cli.benchmark import bench_env

    if n_envs < 1 or steps < 1 or rounds < 1:
        raise ConfigError("--n-envs, --steps and --rounds must be at least 1")
    overrides = {"env": {"env_id": env_id}} if env_id else {}
    cfg = load_config(config, overrides).env
    with console.status("measuring", spinner="dots") as status:
        result = bench_env(
            cfg,
            n_envs,
            steps,
            n_workers,
            progress=lambda what: status.update(f"measuring {what}"),
            rounds=rounds,
        )
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    table = Table(title=f"mario bench env ({cfg.env_id}, {result.cpu_count} cores)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("bare emulator frames/s", f"{result.raw_fps:,.0f}")
    table.add_row("ceiling agent steps/s (1 core)", f"{result.raw_fps / result.frame_skip:,.1f}")
    table.add_row("one env agent steps/s", f"{result.single_env_sps:,.1f}")
    table.add_row(
        f"{result.n_envs} envs / {result.n_workers} workers steps/s",
        f"{result.vector_env_sps:,.1f}",
    )
    table.add_row(
        f"{result.n_envs} envs, a whole rollout per command (workers acting) steps/s",
        f"{result.rollout_env_sps:,.1f}",
    )
    table.add_row("efficiency (one env / ceiling)", f"{result.efficiency:.2f}")
    table.add_row("scaling (vector / one env)", f"{result.scaling:.2f}")
    table.add_row(
        "  = workers x an env's speed beside the others (÷ alone)",
        f"{result.lockstep_env_speed:.2f}",
    )
    table.add_row(
        "    x workers' share of the time stepping",
        f"{result.lockstep_busy:.2f}",
    )
    table.add_row(
        "rollout scaling (a rollout per command / one env)", f"{result.rollout_scaling:.2f}"
    )
    table.add_row(
        f"host scaling ({result.n_workers} bare emulators at once / one)",
        f"{result.host_scaling:.2f}",
    )
    table.add_row(
        f"{result.pipelined_n_envs} envs in {result.pipelined_groups} groups, as training "
        "steps them, steps/s",
        f"{result.pipelined_env_sps:,.1f}",
    )
    table.add_row("pipelined scaling (that / one env)", f"{result.pipelined_scaling:.2f}")
    if result.rounds > 1:
        per_round = ", ".join(f"{value:.2f}" for value in result.scaling_rounds)
        table.add_row(f"  scaling in each of {result.rounds} rounds", per_round)
        per_round = ", ".join(f"{value:.2f}" for value in result.lockstep_env_speed_rounds)
        table.add_row(f"  an env's speed beside the others, {result.rounds} rounds", per_round)
        per_round = ", ".join(f"{value:.2f}" for value in result.lockstep_busy_rounds)
        table.add_row(f"  workers' share stepping, {result.rounds} rounds", per_round)
        per_round = ", ".join(f"{value:.2f}" for value in result.rollout_scaling_rounds)
        table.add_row(f"  rollout scaling in each of {result.rounds} rounds", per_round)
        per_round = ", ".join(f"{value:.2f}" for value in result.host_scaling_rounds)
        table.add_row(f"  host scaling in each of {result.rounds} rounds", per_round)
        per_round = ", ".join(f"{value:.2f}" for value in result.pipelined_scaling_rounds)
        table.add_row(f"  pipelined scaling in each of {result.rounds} rounds", per_round)
    console.print(table)


@app.command("sb3")
def sb3(
    minutes: float | None = typer.Option(None, "--minutes", help="Stop after this wall time."),
    total_timesteps: int = typer.Option(10_000_000, "--total-timesteps", help="Step budget."),
    n_envs: int = typer.Option(8, "--n-envs", help="Envs (one process each, as SB3 does)."),
    env_id: str = typer.Option("SuperMarioBros-1-1-v0", "--env-id", help="Env id."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    artifacts_dir: Path = typer.Option(Path("artifacts"), "--artifacts-dir", help="Output root."),
    run_name: str | None = typer.Option(None, "--run-name", help="Run folder name."),
) -> None:
    """Train Stable-Baselines3 PPO with the classic Mario settings, as a comparable run."""
    from mario_cli.baselines.sb3_ppo import run_sb3_ppo

    with console.status("training Stable-Baselines3 PPO (classic settings)"):
        summary = run_sb3_ppo(
            env_id, n_envs, total_timesteps, artifacts_dir, minutes, seed, run_name
        )
    console.print_json(data=summary)


# The rows of `bench train`'s in-run CPU split, in the order they are printed.
IN_RUN_LABELS = {
    "workers_per_step": "env workers",
    "trainer_collect_per_step": "trainer, collecting",
    "trainer_update_per_step": "trainer, updating",
    "trainer_other_per_step": "trainer, other",
    "idle_per_step": "idle cores",
}


@app.command("train")
def train(
    steps: int = typer.Option(4096, "--steps", help="Agent steps of training to time."),
    vs_sb3: bool = typer.Option(False, "--vs-sb3", help="Also time Stable-Baselines3 PPO."),
    rounds: int = typer.Option(1, "--rounds", help="Alternating rounds (mario, SB3, ...)."),
    same_settings: bool = typer.Option(
        False,
        "--same-settings",
        help="Also time mario with SB3's classic settings (like for like; with --vs-sb3).",
    ),
    config: Path | None = config_path_option(),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Training steps/s of the default config, where the time goes, and vs SB3."""
    from mario_cli.benchmark import bench_train, host_drift, shared_cores

    if steps < 1 or rounds < 1:
        raise ConfigError("--steps and --rounds must be at least 1")
    if same_settings and not vs_sb3:
        raise ConfigError("--same-settings compares with SB3: add --vs-sb3")
    if vs_sb3:
        from mario_cli.baselines.sb3_ppo import require_sb3

        require_sb3()
    cfg = load_config(config, {"ui": {"mode": "quiet"}})
    with console.status("measuring", spinner="dots") as status:
        result = bench_train(
            cfg, steps, vs_sb3, rounds, lambda what: status.update(what), same_settings
        )
    if as_json:
        print(json.dumps(result))
        return
    table = Table(
        title=f"mario bench train ({result['steps']:,} steps, {result['cpu_count']} cores)"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("training steps/s", f"{result['sps']:,.1f}")
    table.add_row("emulator ceiling steps/s", f"{result['env_ceiling_sps']:,.1f}")
    table.add_row("ratio to ceiling", f"{result['ratio_to_ceiling']:.2f}")
    if result["rounds"] > 1:
        per_round = ", ".join(f"{value:.2f}" for value in result["ratio_to_ceiling_rounds"])
        table.add_row("  ratio to ceiling, each round", per_round)
    cores = result["cpu_count"]
    table.add_row(
        f"{cores} bare emulators at once, steps/s", f"{result['env_parallel_ceiling_sps']:,.1f}"
    )
    table.add_row(f"  host scaling (of {cores}.00)", f"{result['host_scaling']:.2f}")
    to_parallel = f"{result['ratio_to_parallel_ceiling']:.2f}"
    table.add_row("ratio to all-cores-at-once ceiling", to_parallel)
    if result["rounds"] > 1:
        per_round = ", ".join(f"{value:.2f}" for value in result["host_scaling_rounds"])
        table.add_row("  host scaling, each round", per_round)
    costs = result["costs_ms"]
    table.add_row("  emulator CPU-ms per step", f"{costs['emulator_per_step']:.2f}")
    table.add_row("  inference CPU-ms per step", f"{costs['inference_per_step']:.2f}")
    table.add_row("  learner CPU-ms per sample", f"{costs['learner_per_sample']:.2f}")
    table.add_row("limit steps/s (cores / total cost)", f"{result['limit_sps']:,.1f}")
    table.add_row("ratio to limit", f"{result['ratio_to_limit']:.2f}")
    if result["rounds"] > 1:
        per_round = ", ".join(f"{value:.2f}" for value in result["ratio_to_limit_rounds"])
        table.add_row("  ratio to limit, each round", per_round)
    busy = result["cpu_busy"]
    table.add_row("CPU busy (all processes)", "n/a" if busy is None else f"{busy:.2f}")
    for phase, seconds in result["breakdown"].items():
        table.add_row(f"  {phase} (s)", f"{seconds:.1f}")
    in_run = result.get("in_run_cpu_ms")
    if in_run is not None:
        total = f"{in_run['total_per_step']:.2f}"
        table.add_row("in the run, CPU-ms per step (cores x wall)", total)
        for part, label in IN_RUN_LABELS.items():
            table.add_row(f"  {label}", f"{in_run[part]:.2f}")
    if vs_sb3:
        table.add_row("Stable-Baselines3 steps/s", f"{result['sb3_sps']:,.1f}")
        table.add_row("  collecting (s)", f"{result['sb3_collect_seconds']:.1f}")
        table.add_row("  update (s)", f"{result['sb3_update_seconds']:.1f}")
        table.add_row("ratio vs SB3 (defaults)", f"{result['ratio_vs_sb3']:.2f}")
    if same_settings:
        table.add_row("mario, SB3's settings, steps/s", f"{result['same_settings_sps']:,.1f}")
        for phase, seconds in result["same_settings_breakdown"].items():
            table.add_row(f"  {phase} (s)", f"{seconds:.1f}")
        table.add_row("ratio vs SB3 (same settings)", f"{result['ratio_vs_sb3_same_settings']:.2f}")
    console.print(table)
    if shared_cores(result["host_scaling"], cores):
        console.print(
            f"[yellow]note:[/] {cores} bare emulators at once ran only "
            f"{result['host_scaling']:.2f} times as fast as one: these cores share physical "
            "cores (hyperthreads) or caches, so the ceiling of cores x one core is out of "
            "reach; read the ratio to the all-cores-at-once ceiling",
            highlight=False,
        )
    if busy is None:
        rollout = cfg.algo.n_steps * cfg.env.n_envs
        console.print(
            f"[yellow]note:[/] CPU busy and the CPU split in the run are measured from the end "
            f"of the first rollout ({rollout:,} steps) on: use --steps {2 * rollout} or more",
            highlight=False,
        )
    drift = host_drift(result["env_ceiling_sps_rounds"])
    if drift is not None:
        low, high = drift
        console.print(
            f"[yellow]note:[/] the bare emulator ran at {low:,.0f}–{high:,.0f} steps/s between "
            "rounds: this machine's speed drifted, so compare the per-round ratios, not "
            "steps/s from different runs",
            highlight=False,
        )


@app.command("learn")
@config_options()
def learn(
    minutes: float | None = typer.Option(
        None, "--minutes", help="Wall-clock budget per seed (compare finalists with this)."
    ),
    steps: int | None = typer.Option(
        None, "--steps", help="Agent-step budget per seed: the same result on a busy machine."
    ),
    seeds: int = typer.Option(1, "--seeds", help="Seeds, trained one after another (--seed +k)."),
    stage: str | None = typer.Option(None, "--stage", help="Stage W-S to learn (e.g. 1-1)."),
    eval_every: str | None = typer.Option(
        None,
        "--eval-every",
        help="Eval point spacing: minutes (5m) or agent steps (50000, 50k); default budget/6.",
    ),
    eval_episodes: int = typer.Option(20, "--eval-episodes", help="Episodes per eval point."),
    policy: str = typer.Option("both", "--policy", help="greedy, stochastic or both."),
    noop_max: int = typer.Option(
        DEFAULT_NOOP_MAX,
        "--noop-max",
        help="Eval start: 0..N no-op frames, each once in a seeded order.",
    ),
    eval_max_steps: int = typer.Option(5000, "--eval-max-steps", help="Step limit per episode."),
    eval_workers: int = typer.Option(0, "--eval-workers", help="Eval processes (0: one per core)."),
    name: str | None = typer.Option(
        None, "--name", help="Result folder under artifacts/bench (default: learn-STAGE-TIME)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    config: Path | None = config_path_option(),
    overrides: dict | None = None,
) -> None:
    """Train real runs, evaluate each eval point afterwards: minutes and steps to clear.

    Any `mario train` flag sets the variant: `mario bench learn --steps 200000 --n-epochs 10`.

    Runs land in artifacts/runs/NAME-seedK, the result in artifacts/bench/NAME.

    Compare results with `mario bench learn-report A B`.
    """
    from mario_cli.cli.train import _stop_on_signals
    from mario_cli.envs.stages import parse_env_id, stage_spec
    from mario_cli.learnbench import (
        Amount,
        BenchSettings,
        add_seed,
        evaluate_points,
        make_budget,
        new_result,
        parse_amount,
        train_seed,
        write_result,
    )
    from mario_cli.sinks.tensorboard import TensorBoardSink
    from mario_cli.training.trainer import TrainingControl

    overrides = {section: dict(values) for section, values in (overrides or {}).items()}
    variant = chosen_settings(config, overrides)  # a -c file and MARIO_* variables too
    if stage is not None:
        spec = stage_spec(stage)
        overrides.setdefault("env", {}).update(env_id=spec.env_id, random_stage=False)
    cfg = load_config(config, overrides)
    parse_env_id(cfg.env.env_id)
    budget = make_budget(minutes, steps)
    every = parse_amount(eval_every) if eval_every else Amount(budget.unit, budget.value / 6)
    label = cfg.env.env_id.removeprefix("SuperMarioBros-").removesuffix("-v0")
    settings = BenchSettings(
        name=name or f"learn-{label}-{time.strftime('%Y%m%d-%H%M%S')}",
        budget=budget,
        eval_every=every,
        seeds=[cfg.train.seed + k for k in range(seeds)],
        eval_episodes=eval_episodes,
        policy=policy,
        noop_max=noop_max,
        eval_max_steps=eval_max_steps,
        workers=eval_workers or (os.cpu_count() or 1),
        artifacts=cfg.train.artifacts_dir,
    )
    settings.check()
    if settings.folder.exists():
        raise ConfigError(f"{settings.folder} exists; pick another --name")
    result = new_result(settings, cfg.env.env_id, cfg.to_dict(), variant)
    out = err_console if as_json else console
    out.print(
        f"bench learn {settings.name}: {len(settings.seeds)} seed(s) x {budget.describe()} on "
        f"{cfg.env.env_id}, eval every {every.describe()} ({eval_episodes} episodes, "
        f"{policy}); load {os.getloadavg()[0]:.2f}",
        highlight=False,
    )
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=out,
    )
    with progress:
        for k, seed in enumerate(settings.seeds, start=1):
            task = progress.add_task(
                f"seed {seed} ({k}/{len(settings.seeds)}) train", total=budget.value, status=""
            )

            def on_iteration(done: int, elapsed: float, metrics: dict, task=task) -> None:
                x = metrics.get(names.ROLLOUT_AVG_MAX_X_POS)
                status = f"{done:,} steps, {metrics.get('time/fps', 0):.0f}/s"
                if x is not None:
                    status += f", avg max x {x:.0f}, clear {metrics['rollout/clear_rate']:.0%}"
                progress.update(task, completed=budget.of(done, elapsed), status=status)

            def show_hints(event: Any) -> None:
                if type(event).__name__ == "Hint":
                    progress.console.print(f"[yellow]hint:[/] {event.message}", highlight=False)

            control = TrainingControl()
            with _stop_on_signals(control):
                training = train_seed(
                    cfg, settings, seed, control, [TensorBoardSink(), show_hints], on_iteration
                )
            progress.update(task, completed=budget.value)
            eval_task = progress.add_task(
                f"seed {seed} ({k}/{len(settings.seeds)}) eval",
                total=len(training.points) * eval_episodes * (len(settings.policies) + 1),
                status=f"{len(training.points)} eval points",
            )
            points = evaluate_points(
                training,
                settings,
                on_episode=lambda done, total, t=eval_task: progress.update(t, completed=done),
            )
            add_seed(result, training, points, settings.policies)
            result["machine"]["loadavg_end"] = list(os.getloadavg())
            result["interrupted"] = training.status == "interrupted"
            write_result(result, settings.folder)
            if result["interrupted"]:
                out.print("[yellow]interrupted: kept the seeds evaluated so far[/]")
                break
    _finish_learn_result(result, settings.folder, as_json)


@app.command("learn-eval")
def learn_eval(
    earlier: str = typer.Argument(..., help="A bench-learn name, folder or result.json."),
    name: str | None = typer.Option(
        None, "--name", help="Result folder under artifacts/bench (default: NAME-eval)."
    ),
    eval_episodes: int | None = typer.Option(
        None, "--eval-episodes", help="Episodes per eval point (default: as before)."
    ),
    policy: str | None = typer.Option(
        None, "--policy", help="greedy, stochastic or both (default: as before)."
    ),
    noop_max: int | None = typer.Option(
        None, "--noop-max", help="Eval start: 0..N no-op frames, each once (default: as before)."
    ),
    eval_max_steps: int | None = typer.Option(
        None, "--eval-max-steps", help="Step limit per episode (default: as before)."
    ),
    eval_workers: int = typer.Option(0, "--eval-workers", help="Eval processes (0: one per core)."),
    artifacts_dir: Path = typer.Option(Path("artifacts"), "--artifacts-dir", help="Runs root."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Evaluate an earlier `bench learn` result's eval points again, without training.

    Its kept snapshots are played under today's start protocol, with more episodes or
    another policy if asked; the training (minutes, steps, best.pt) is the earlier one.
    """
    from mario_cli.learnbench import (
        Amount,
        BenchSettings,
        add_seed,
        evaluate_points,
        evaluated_again,
        load_result,
        missing_snapshots,
        trainings_of,
        write_result,
    )

    before = load_result(earlier, artifacts_dir)
    trainings = trainings_of(before)
    try:
        settings = BenchSettings(
            name=name or f"{before['name']}-eval",
            budget=Amount.from_dict(before["budget"]),
            eval_every=Amount.from_dict(before["eval_every"]),
            seeds=[training.seed for training in trainings],
            eval_episodes=_or_earlier(eval_episodes, before["eval"]["episodes"]),
            policy=_or_earlier(policy, before["eval"]["policy"]),
            noop_max=_or_earlier(noop_max, before["eval"]["start"]["noop_max"]),
            eval_max_steps=_or_earlier(eval_max_steps, before["eval"]["max_steps"]),
            workers=eval_workers or (os.cpu_count() or 1),
            artifacts=artifacts_dir,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MarioError(
            f"{earlier} is not a complete bench-learn result (it lacks {exc}); "
            "train it again with `mario bench learn`"
        ) from None
    settings.check()
    if not trainings:
        raise MarioError(f"{before['name']} has no finished seed to evaluate")
    if settings.folder.exists():
        raise ConfigError(f"{settings.folder} exists; pick another --name")
    missing = missing_snapshots(trainings)
    if missing:
        raise MarioError(
            f"{len(missing)} snapshot(s) of {before['name']} are gone (e.g. {missing[0]}); "
            "run from the folder it was trained in, or train it again with `mario bench learn`"
        )
    result = evaluated_again(before, settings)
    out = err_console if as_json else console
    out.print(
        f"bench learn-eval {settings.name}: {before['name']}'s eval points again, "
        f"{settings.eval_episodes} episodes, {settings.policy}; load {os.getloadavg()[0]:.2f}",
        highlight=False,
    )
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=out
    ) as progress:
        for training in trainings:
            columns = len(settings.policies) + any("best_checkpoint" in p for p in training.points)
            task = progress.add_task(
                f"seed {training.seed} eval",
                total=len(training.points) * settings.eval_episodes * columns,
            )
            points = evaluate_points(
                training,
                settings,
                on_episode=lambda done, total, t=task: progress.update(t, completed=done),
            )
            add_seed(result, training, points, settings.policies)
            write_result(result, settings.folder)
    _finish_learn_result(result, settings.folder, as_json)


def _or_earlier(given: Any, earlier: Any) -> Any:
    """A flag's value if given (0 included, for the usual check), else the earlier one."""
    return earlier if given is None else given


def _finish_learn_result(result: dict[str, Any], folder: Path, as_json: bool) -> None:
    """Plot and write a bench-learn result; print it as JSON or as tables."""
    from mario_cli.learnbench import plot_seeds, write_result

    result["plot"] = str(plot_seeds(result, folder / "learn.png"))
    path = write_result(result, folder)
    if as_json:
        print(json.dumps(result, default=str))
        return
    print_learn_table(result)
    console.print(f"wrote {path} and {result['plot']}", highlight=False)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _when(hit: dict | None) -> str:
    if hit is None:
        return "-"
    return f"{hit['minutes']:.1f} min, {int(hit['steps']) / 1000:.0f}k"


def print_learn_table(result: dict[str, Any]) -> None:
    from mario_cli.eval_protocol import describe_start
    from mario_cli.learnbench import BEST, result_columns

    policies = result_columns(result)
    table = Table(title=f"mario bench learn: {result['name']} ({result['env_id']})")
    for column in ("seed", "minutes", "steps", *(f"{p} clear" for p in policies)):
        table.add_column(column, justify="right")
    for policy in policies:
        table.add_column(f"{policy} max x", justify="right")
    rows = [(str(s["seed"]), s["points"]) for s in result["seeds"]]
    rows.append(("median", result["median"]["points"]))
    for label, points in rows:
        for point in points:
            table.add_row(
                label,
                f"{point['minutes']:.1f}",
                f"{int(point['steps']):,}",
                *(_rate(point[p]["clear_rate"]) for p in policies),
                *(f"{point[p]['avg_max_x_pos']:.0f}" for p in policies),
            )
            label = ""
        table.add_section()
    console.print(table)
    reached = Table(
        title="minutes, agent steps to the first eval clear, >=50% and >=80%",
        caption="- not reached",
    )
    for column in ("seed", "policy", "first clear", ">=50%", ">=80%"):
        reached.add_column(column, justify="right")
    entries = [(str(s["seed"]), s["milestones"]) for s in result["seeds"]]
    entries.append(("median", result["median"]["milestones"]))
    for label, found in entries:
        for policy in policies:
            hits = found[policy]
            reached.add_row(label, policy, *(_when(hits[m]) for m in MILESTONE_NAMES))
    console.print(reached)
    start = describe_start(result["eval"]["start"])
    console.print(
        f"eval: {result['eval']['episodes']} episodes per point and policy, {start}, "
        f"after training; load {result['machine']['loadavg_start'][0]:.2f} at the start",
        highlight=False,
    )
    again = result.get("evaluated_again")
    if again:
        earlier = again["earlier_eval"]
        console.print(
            f"evaluated again from {again['from']} (which played {earlier['episodes']} "
            f"episodes {describe_start(earlier['start'])}); load "
            f"{again['loadavg_start'][0]:.2f} when evaluated",
            highlight=False,
        )
    if BEST in policies:
        console.print(
            f"{BEST}: greedy play of the run's best.pt at that point, which is what "
            "`mario eval` of the run reports",
            highlight=False,
        )


MILESTONE_NAMES = ("first_clear", "clear_50", "clear_80")


@app.command("learn-report")
def learn_report(
    results: list[str] = typer.Argument(..., help="bench-learn names, folders or result.json."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="PNG (default artifacts/bench/compare-A-vs-B.png)."
    ),
    artifacts_dir: Path = typer.Option(Path("artifacts"), "--artifacts-dir", help="Runs root."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """Earlier `bench learn` results side by side: one table row and plot line per variant."""
    from mario_cli.learnbench import BENCH_DIR, load_result, plot_compare, result_columns

    loaded = [load_result(ref, artifacts_dir) for ref in results]
    rows = []
    for result in loaded:
        policies = result_columns(result)
        last = result["median"]["points"][-1] if result["median"]["points"] else None
        sps = [s["steps_per_second"] for s in result["seeds"] if s["steps_per_second"]]
        row: dict[str, Any] = {
            "name": result["name"],
            "variant": result.get("variant", {}),
            "seeds": len(result["seeds"]),
            "budget": result["budget"],
            "steps_per_second": round(statistics.median(sps), 1) if sps else None,
            "final": {
                p: {
                    "clear_rate": last[p]["clear_rate"] if last else None,
                    "avg_max_x_pos": last[p]["avg_max_x_pos"] if last else None,
                }
                for p in policies
            },
            "milestones": result["median"]["milestones"],
        }
        rows.append(row)
    target = output or artifacts_dir / BENCH_DIR / (
        "compare-" + "-vs-".join(r["name"] for r in loaded) + ".png"
    )
    plot = plot_compare(loaded, target)
    if as_json:
        print(json.dumps({"rows": rows, "plot": str(plot)}, default=str))
        return
    table = Table(
        title="mario bench learn-report (medians over seeds)",
        caption="milestones: minutes, agent steps at the first eval point to reach them; "
        "- not reached",
    )
    table.add_column("variant", overflow="fold")
    for column in ("seeds", "steps/s", "policy", "final clear", "final max x"):
        table.add_column(column, justify="right")
    for column in ("first clear", ">=50%", ">=80%"):
        table.add_column(column, justify="right")
    for row in rows:
        variant = f"{row['name']}\n[dim]{_variant_flags(row['variant']) or '(defaults)'}[/]"
        for i, (policy, final) in enumerate(row["final"].items()):
            hits = row["milestones"].get(policy, {})
            table.add_row(
                variant if i == 0 else "",
                str(row["seeds"]) if i == 0 else "",
                f"{row['steps_per_second']:.0f}" if i == 0 and row["steps_per_second"] else "",
                policy,
                _rate(final["clear_rate"]),
                "-" if final["avg_max_x_pos"] is None else f"{final['avg_max_x_pos']:.0f}",
                *(_when(hits.get(m)) for m in MILESTONE_NAMES),
            )
        table.add_section()
    console.print(table)
    console.print(f"wrote {plot}", highlight=False)


def _variant_flags(variant: dict[str, dict[str, Any]]) -> str:
    """The variant as the flags that set it now (older results name keys that moved)."""
    from mario_cli.config import flag_of, upgrade_keys

    parts = []
    for section, values in upgrade_keys(variant).items():
        for key, value in values.items():
            for path, leaf in _leaves((section, key), value):
                if isinstance(leaf, list):
                    leaf = ",".join(str(v) for v in leaf)
                parts.append(f"{flag_of(path)} {leaf}")
    return " ".join(parts)


def _leaves(path: tuple[str, ...], value: Any) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _leaves((*path, key), item)]
    return [(path, value)]
