"""``mario bench``: measure the env pipeline (and, later, training) on this machine."""

import json
from pathlib import Path

import typer
from rich.table import Table

from mario_cli.cli.console import console
from mario_cli.cli.options import config_path_option
from mario_cli.config import load_config
from mario_cli.errors import ConfigError

app = typer.Typer(help="Measure throughput on this machine.", no_args_is_help=True)


@app.command("env")
def env(
    n_envs: int = typer.Option(2, "--n-envs", help="Envs in the vector env measurement."),
    steps: int = typer.Option(500, "--steps", help="Agent steps per measurement."),
    n_workers: int | None = typer.Option(
        None, "--n-workers", help="Worker processes (default: one per core)."
    ),
    env_id: str | None = typer.Option(None, "--env-id", help="Env id to measure."),
    config: Path | None = config_path_option(),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Raw emulator frames/s, one env's agent steps/s, and N envs' steps/s."""
    from mario_cli.benchmark import bench_env

    if n_envs < 1 or steps < 1:
        raise ConfigError("--n-envs and --steps must be at least 1")
    overrides = {"env": {"env_id": env_id}} if env_id else {}
    cfg = load_config(config, overrides).env
    with console.status("measuring", spinner="dots") as status:
        result = bench_env(
            cfg, n_envs, steps, n_workers, progress=lambda what: status.update(f"measuring {what}")
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
    table.add_row("efficiency (one env / ceiling)", f"{result.efficiency:.2f}")
    table.add_row("scaling (vector / one env)", f"{result.scaling:.2f}")
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


@app.command("train")
def train(
    steps: int = typer.Option(4096, "--steps", help="Agent steps of training to time."),
    vs_sb3: bool = typer.Option(False, "--vs-sb3", help="Also time Stable-Baselines3 PPO."),
    rounds: int = typer.Option(1, "--rounds", help="Alternating rounds (mario, SB3, ...)."),
    config: Path | None = config_path_option(),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Training steps/s of the default config, where the time goes, and vs SB3."""
    from mario_cli.benchmark import bench_train

    if steps < 1 or rounds < 1:
        raise ConfigError("--steps and --rounds must be at least 1")
    if vs_sb3:
        from mario_cli.baselines.sb3_ppo import _require_sb3

        _require_sb3()
    cfg = load_config(config, {"ui": {"ui": "quiet"}})
    with console.status("measuring", spinner="dots") as status:
        result = bench_train(cfg, steps, vs_sb3, rounds, lambda what: status.update(what))
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
    for phase, seconds in result["breakdown"].items():
        table.add_row(f"  {phase} (s)", f"{seconds:.1f}")
    if vs_sb3:
        table.add_row("Stable-Baselines3 steps/s", f"{result['sb3_sps']:,.1f}")
        table.add_row("ratio vs SB3", f"{result['ratio_vs_sb3']:.2f}")
    console.print(table)
