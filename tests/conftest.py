"""Shared fixtures: an isolated working directory and config, and the real env pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mario_cli.config import EnvConfig
from mario_cli.plugins import PluginHost, set_host

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in an empty folder with no MARIO_* variables set."""
    for name in list(os.environ):
        if name.startswith("MARIO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def env_cfg() -> EnvConfig:
    """The default env config on 1-1, every reset at the stage start (restarts off), with
    stall cuts far away unless a test sets them."""
    return EnvConfig(reward={"no_progress_cut_steps": 0}, restarts={"share": 0.0})


def run_mario(*args: str, env: dict[str, str] | None = None, timeout: int = 300):
    """Run the installed ``mario`` command in the current directory."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MARIO_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mario_cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


@contextmanager
def plugin_host(*plugins: object) -> Iterator[PluginHost]:
    """The process-wide plugin host with ``plugins`` added, for the ``with`` block."""
    try:
        host = PluginHost(extra_plugins=list(plugins))
        set_host(host)
        yield host
    finally:
        set_host(None)
