"""Headless mp4 of an agent playing: every NES frame it needs, H.264 via imageio-ffmpeg.

imageio-ffmpeg ships its own ffmpeg binary, so no system ffmpeg is needed. The mp4
appears only when complete (temp file + rename); if encoding fails, the frames are
kept as PNGs with the ffmpeg command that joins them.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mario_cli.errors import MarioError

NES_FPS = 60


@dataclass
class RecordResult:
    path: Path
    frames: int
    episodes: int
    fallback_command: str | None = None


def _overlay(frame: np.ndarray, lines: list[str]) -> np.ndarray:
    """Text in the bottom-left corner (over the ground, clear of the game's HUD)."""
    unit = frame.shape[0] / 240  # the upscale factor
    size, step = 0.32 * unit, round(11 * unit)
    thickness = max(1, round(unit / 2))
    for i, text in enumerate(lines):
        y = frame.shape[0] - round(6 * unit) - step * (len(lines) - 1 - i)
        x = round(4 * unit)
        shadow = max(1, round(unit))
        font = cv2.FONT_HERSHEY_SIMPLEX
        cv2.putText(frame, text, (x + shadow, y + shadow), font, size, (0, 0, 0), thickness)
        cv2.putText(frame, text, (x, y), font, size, (255, 255, 255), thickness)
    return frame


class _Filled(Exception):
    """Raised from the step callback once the video has all its frames."""


def collect_frames(
    agent: Any,
    duration: float,
    fps: int,
    greedy: bool,
    scale: int,
    overlay: bool,
    seed: int,
    noop_max: int = 0,
) -> tuple[list[np.ndarray], int]:
    """``duration * fps`` RGB frames of game time, episode after episode; and the episodes.

    Episodes start as in ``mario eval``: episode i uses seed + i and the i-th wait of
    ``episode_noops``.
    """
    from mario_cli.envs import make_env
    from mario_cli.envs.stages import action_names
    from mario_cli.eval_protocol import episode_noops
    from mario_cli.evaluation import play_episode

    if not 1 <= fps <= NES_FPS:
        raise MarioError(f"--fps must be between 1 and {NES_FPS}")
    if duration <= 0 or scale < 1:
        raise MarioError("--duration must be positive and --scale at least 1")
    wanted = max(1, round(duration * fps))
    every = NES_FPS / fps
    names = action_names(agent.cfg.env.movement)
    env = make_env(agent.cfg.env)
    frames: list[np.ndarray] = []
    clock = 0
    label: list[str] = []

    def on_frame(screen: np.ndarray) -> None:
        nonlocal clock
        if len(frames) < wanted and clock >= every * len(frames):
            frame = screen.copy()
            if scale != 1:
                frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
            frames.append(_overlay(frame, label) if overlay else frame)
        clock += 1

    episodes = 0

    def on_step(step: dict[str, Any]) -> None:
        label[:] = [
            f"episode {episodes}  x {step['info']['x_pos']}",
            f"{names[step['action']]}  value {step['value']:.2f}",
        ]
        if len(frames) >= wanted:
            raise _Filled

    env.unwrapped.on_frame = on_frame
    try:
        while len(frames) < wanted:
            episodes += 1
            try:
                wait = episode_noops(seed, episodes - 1, noop_max)
                play_episode(agent, env, greedy, 1_000_000, seed + episodes - 1, on_step, wait)
            except _Filled:
                break
    finally:
        env.close()
    return frames, episodes


def default_output(artifacts: Path, run_name: str) -> Path:
    import time

    from mario_cli.runs import videos_dir

    return videos_dir(artifacts) / f"{run_name}_{time.strftime('%Y%m%d-%H%M%S')}.mp4"


def write_mp4(frames: list[np.ndarray], output: Path, fps: int) -> None:
    """Encode H.264 to a temp file, then rename: the mp4 exists only when complete."""
    import imageio_ffmpeg

    height, width = frames[0].shape[:2]
    tmp = output.with_name(output.stem + ".partial.mp4")
    writer = imageio_ffmpeg.write_frames(
        str(tmp),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        quality=7,
        ffmpeg_log_level="error",
    )
    try:
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        tmp.replace(output)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def save_png_frames(frames: list[np.ndarray], output: Path, fps: int) -> tuple[Path, str]:
    folder = output.with_name(output.stem + "_frames")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{i:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    command = shlex.join(
        [
            "ffmpeg",
            "-framerate",
            str(fps),
            "-i",
            str(folder / "frame_%05d.png"),
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            str(output),
        ]
    )
    return folder, command
