"""``mario record``: a shareable mp4 of the agent, made headless."""

from __future__ import annotations

from pathlib import Path

import typer

from mario_cli.cli.console import console
from mario_cli.cli.eval import resolve_policy
from mario_cli.errors import ConfigError, MarioError
from mario_cli.eval_protocol import DEFAULT_NOOP_MAX, check_noop_max
from mario_cli.runs import RunPaths


def record(
    model: str | None = typer.Argument(
        None, help="Run name, run folder or checkpoint (default: latest run's best/final)."
    ),
    duration: float = typer.Option(10.0, "--duration", help="Seconds of video."),
    fps: int = typer.Option(30, "--fps", help="Frames per second (of game time, max 60)."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="mp4 path (default artifacts/videos/<run>_<time>.mp4)."
    ),
    policy: str = typer.Option("greedy", "--policy", help="greedy (argmax) or stochastic."),
    stochastic: bool = typer.Option(False, "--stochastic", help="Same as --policy stochastic."),
    noop_max: int = typer.Option(
        DEFAULT_NOOP_MAX,
        "--noop-max",
        help="Episodes wait 0..N no-op frames at the stage start, each once in a seeded order.",
    ),
    scale: int = typer.Option(2, "--scale", help="Integer upscale of the 256x240 screen."),
    overlay: bool = typer.Option(False, "--overlay", help="Draw x, action, value and episode."),
    env_id: str | None = typer.Option(None, "--env-id", help="Play another env id."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first episode."),
    artifacts_dir: Path = typer.Option(Path("artifacts"), "--artifacts-dir", help="Runs root."),
) -> None:
    """Record the agent playing to an H.264 mp4 (no window, no system ffmpeg needed)."""
    from mario_cli.evaluation import find_model, load_agent
    from mario_cli.recording import collect_frames, default_output, save_png_frames, write_mp4

    policy = resolve_policy(policy, stochastic)
    if policy not in ("greedy", "stochastic"):
        raise ConfigError(f"--policy {policy}: a video plays one policy, greedy or stochastic")
    check_noop_max(noop_max)
    checkpoint = find_model(model, artifacts_dir)
    overrides = {"env_id": env_id, "random_stage": False} if env_id else {}
    agent = load_agent(checkpoint, overrides)
    run = RunPaths.of_checkpoint(checkpoint)
    run_name = run.name if run is not None else "model"
    target = output or default_output(artifacts_dir, run_name)
    if target.suffix.lower() != ".mp4":
        raise MarioError(f"--output {target} must end in .mp4")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MarioError(f"cannot create {target.parent}: {exc.strerror}") from None
    with console.status(f"playing {duration:g}s at {fps} fps"):
        frames, episodes = collect_frames(
            agent, duration, fps, policy == "greedy", scale, overlay, seed, noop_max
        )
    try:
        write_mp4(frames, target, fps)
    except Exception as exc:
        folder, command = save_png_frames(frames, target, fps)
        raise MarioError(
            f"encoding failed ({type(exc).__name__}: {exc}); the {len(frames)} frames are in "
            f"{folder}; join them with: {command}"
        ) from None
    height, width = frames[0].shape[:2]
    console.print(
        f"wrote {target}: {len(frames)} frames, {width}x{height}, {fps} fps, {episodes} episode(s)",
        highlight=False,
    )
