"""``mario eval``: judge a trained agent with numbers you can trust."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from mario_cli.cli.console import console
from mario_cli.errors import ConfigError, MarioError
from mario_cli.eval_protocol import DEFAULT_NOOP_MAX, check_noop_max, check_policy, describe_start


def policy_option() -> Any:
    return typer.Option(
        "greedy",
        "--policy",
        help="greedy (argmax), stochastic (sampled) or both (two clear rates side by side).",
    )


def noop_max_option() -> Any:
    return typer.Option(
        DEFAULT_NOOP_MAX,
        "--noop-max",
        help="Episodes wait 0..N no-op frames at the stage start, each once in a seeded order.",
    )


def stochastic_option() -> Any:
    return typer.Option(False, "--stochastic", help="Same as --policy stochastic.")


def resolve_policy(policy: str, stochastic: bool) -> str:
    if stochastic and policy not in ("greedy", "stochastic"):
        raise ConfigError(f"--stochastic contradicts --policy {policy}; pass one of them")
    return "stochastic" if stochastic else policy


def eval_command(
    model: str | None = typer.Argument(
        None, help="Run name, run folder or checkpoint (default: latest run's best/final)."
    ),
    episodes: int = typer.Option(5, "--episodes", "-n", help="Episodes (per stage and policy)."),
    policy: str = policy_option(),
    stochastic: bool = stochastic_option(),
    noop_max: int = noop_max_option(),
    max_steps: int = typer.Option(5000, "--max-steps", help="Step limit per episode."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first episode (+1 per episode)."),
    movement: str = typer.Option("auto", "--movement", help="auto: the checkpoint's action set."),
    env_id: str | None = typer.Option(None, "--env-id", help="Evaluate on another env id."),
    stages: str | None = typer.Option(None, "--stages", help="1-1,1-2,... or all: a stage grid."),
    workers: int = typer.Option(0, "--workers", help="Processes (0: one per core)."),
    render: bool = typer.Option(False, "--render", help="Watch the agent play in a window."),
    deviations: bool = typer.Option(
        False,
        "--deviations",
        help="Also play one greedy episode (no no-ops) and list the one-step changes in "
        "its last --deviations-window steps that get 64 px further (a minute or so).",
    ),
    deviations_window: int = typer.Option(
        28, "--deviations-window", help="Steps before the greedy path's end to try changes at."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    artifacts_dir: Path = typer.Option(Path("artifacts"), "--artifacts-dir", help="Runs root."),
) -> None:
    """Average reward, furthest x and clear rate of a trained agent, from the stage start."""
    from mario_cli.evaluation import evaluate, find_model, parse_stages

    if episodes < 1 or max_steps < 1:
        raise ConfigError("--episodes and --max-steps must be at least 1")
    check_noop_max(noop_max)
    if deviations_window < 1:
        raise ConfigError("--deviations-window must be at least 1")
    policy = resolve_policy(policy, stochastic)
    policies = check_policy(policy)
    checkpoint = find_model(model, artifacts_dir)
    overrides: dict[str, Any] = {"movement": movement}
    if env_id:
        from mario_cli.envs.stages import parse_env_id

        parse_env_id(env_id)
        overrides.update(env_id=env_id, random_stage=False)
    stage_list = parse_stages(stages) if stages else None
    if render:
        if deviations:
            raise ConfigError("--render and --deviations do not mix; run them one at a time")
        if len(policies) > 1:
            raise ConfigError("--render plays one policy; pass --policy greedy or stochastic")
        _render(checkpoint, overrides, policy == "greedy", max_steps, seed, episodes, noop_max)
        return
    total = episodes * len(stage_list or [None]) * len(policies)
    n_workers = workers or min(os.cpu_count() or 1, total)

    def run(on_episode: Any = None) -> dict[str, Any]:
        return evaluate(
            checkpoint,
            episodes,
            policy,
            max_steps,
            seed,
            overrides,
            stage_list,
            n_workers,
            noop_max,
            on_episode,
        )

    if as_json:
        result = run()
        if deviations:
            from mario_cli.deviations import explain_greedy_death

            result["greedy_deviations"] = explain_greedy_death(
                checkpoint, overrides, window=deviations_window
            )
        print(json.dumps(result))
        return
    with console.status(f"playing {total} episode(s) with {checkpoint}") as status:
        result = run(lambda done: status.update(f"played {done}/{total} episode(s)"))
    _print_result(result, stage_list)
    if "greedy" in policies and repeats_one_episode(result, "greedy"):
        console.print(
            "[dim]every greedy episode was the same; --noop-max varies the starts and "
            "--policy stochastic samples actions[/]"
        )
    if deviations:
        from mario_cli.deviations import explain_greedy_death

        with console.status("trying one-step deviations on the greedy path"):
            found = explain_greedy_death(checkpoint, overrides, window=deviations_window)
        _print_deviations(found)


def _print_deviations(found: dict[str, Any]) -> None:
    if found["cleared"]:
        console.print(f"greedy path (no no-ops): cleared in {found['steps']} steps")
        return
    from mario_cli.deviations import STALL_STEPS

    x = found["max_x_pos"]
    if found["stuck"]:
        console.print(
            f"greedy path (no no-ops): stuck at x = {x} (no new max x for {STALL_STEPS} "
            f"steps, stopped at step {found['steps']}; eval plays on to the timer)"
        )
        searched = f"the {found['window']} steps before step {found['searched_to']}"
    else:
        console.print(f"greedy path (no no-ops): {found['steps']} steps, ended at x = {x}")
        searched = f"its last {found['window']} steps"
    if not found["saving"]:
        console.print(f"no one-step deviation in {searched} gets 64 px further")
        return
    table = Table(title="one-step deviations that get past it (then greedy again)")
    for column in ("step", "x", "action", "max x", "cleared"):
        table.add_column(column, justify="right")
    for d in found["saving"]:
        table.add_row(
            str(d["step"]),
            str(d["x_pos"]),
            d["action"],
            str(d["max_x_pos"]),
            "yes" if d["cleared"] else "no",
        )
    console.print(table)


def repeats_one_episode(result: dict[str, Any], policy: str = "greedy") -> bool:
    """Whether every ``policy`` episode of each stage was the same (length, max x, return)."""
    seen: dict[str, tuple[Any, ...]] = {}
    chosen = [e for e in result["per_episode"] if e.get("policy", policy) == policy]
    for episode in chosen:
        key = (episode["length"], episode["max_x_pos"], episode["return"])
        if seen.setdefault(episode["stage"], key) != key:
            return False
    return len(chosen) > len(seen)


def _print_result(result: dict[str, Any], stages: list[str] | None) -> None:
    table = Table(title=f"mario eval: {result['model']}")
    for column in ("#", "policy", "stage", "no-ops", "return", "length", "max x", "cleared"):
        table.add_column(column, justify="right")
    for i, episode in enumerate(result["per_episode"], start=1):
        table.add_row(
            str(i),
            episode["policy"],
            episode["stage"],
            str(episode["noop_frames"]),
            f"{episode['return']:.1f}",
            str(episode["length"]),
            str(episode["max_x_pos"]),
            "[green]yes[/]" if episode["cleared"] else "no",
        )
    console.print(table)
    console.print(f"episodes start {describe_start(result['start'])}", highlight=False)
    for name, summary in result["by_policy"].items():
        console.print(
            f"[bold]{name}, {summary['episodes']} episodes[/]: clear rate "
            f"{summary['clear_rate']:.0%}, avg max x {summary['avg_max_x_pos']:.0f}, "
            f"avg reward {summary['avg_reward']:.1f}, avg length {summary['avg_length']:.0f}",
            highlight=False,
        )
        if stages:
            console.print(_stage_grid(summary["per_stage"], name))


def _stage_grid(per_stage: dict[str, dict[str, float]], policy: str) -> Table:
    worlds = sorted({s.split("-")[0] for s in per_stage})
    levels = sorted({s.split("-")[1] for s in per_stage})
    grid = Table(title=f"{policy}: clear rate / mean max x by world and stage")
    grid.add_column("world")
    for level in levels:
        grid.add_column(f"stage {level}", justify="center")
    for world in worlds:
        cells = []
        for level in levels:
            stats = per_stage.get(f"{world}-{level}")
            cells.append(
                f"{stats['clear_rate']:.0%} / {stats['avg_max_x_pos']:.0f}" if stats else "-"
            )
        grid.add_row(world, *cells)
    return grid


def _has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def _render(
    checkpoint: Path,
    overrides: dict[str, Any],
    greedy: bool,
    max_steps: int,
    seed: int,
    n: int,
    noop_max: int,
) -> None:
    if not _has_display():
        raise MarioError(
            "--render needs a display and none was found ($DISPLAY is not set); "
            "use `mario record` to make a video instead"
        )
    from mario_cli.envs import make_env
    from mario_cli.eval_protocol import episode_noops
    from mario_cli.evaluation import load_agent, play_episode

    try:
        from nes_py._image_viewer import ImageViewer
    except Exception as exc:
        raise MarioError(f"cannot open a window ({exc}); use `mario record` instead") from None
    agent = load_agent(checkpoint, overrides)
    env = make_env(agent.cfg.env)
    core = env.unwrapped
    viewer = ImageViewer("mario eval", 240, 256)
    core.on_frame = lambda frame: viewer.show(frame)
    try:
        for episode in range(n):
            wait = episode_noops(seed, episode, noop_max)
            result = play_episode(agent, env, greedy, max_steps, seed + episode, None, wait)
            console.print(f"episode {episode + 1}: {result}", highlight=False)
    finally:
        viewer.close()
        env.close()
