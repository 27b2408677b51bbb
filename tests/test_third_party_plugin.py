"""The README's third-party plugin, installed with pip into a temporary folder: a
backbone with its own option, set from mario.toml, a flag and an env var, listed,
validated, and trained with."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(marker: str) -> str:
    """The fenced code block right after ``<!-- plugin-example:MARKER -->``."""
    text = README.read_text()
    match = re.search(rf"<!-- plugin-example:{marker} -->\n```\w+\n(.*?)```", text, re.S)
    assert match, f"README has no plugin-example:{marker} block"
    return match.group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """pip-install the README's package into a target folder; the env that sees it."""
    root = tmp_path_factory.mktemp("third-party")
    source = root / "mario-wide"
    (source / "mario_wide").mkdir(parents=True)
    (source / "pyproject.toml").write_text(readme_block("pyproject"))
    (source / "mario_wide" / "__init__.py").write_text(readme_block("module"))
    target = root / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    subprocess.run(
        [*pip, "--no-build-isolation", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert list(target.glob("mario_wide-*.dist-info"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARIO_")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return env


def mario(env: dict[str, str], *args: str, cwd: Path | None = None, extra=None):
    return subprocess.run(
        [sys.executable, "-m", "mario_cli", *args],
        capture_output=True,
        text=True,
        env=env | (extra or {}),
        cwd=cwd,
        timeout=600,
    )


def test_the_readme_plugin_is_short() -> None:
    assert len(readme_block("module").strip().splitlines()) < 40


def test_mario_plugins_lists_the_backbone_and_its_option(installed) -> None:
    result = mario(installed, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    backbones = {item["name"]: item for item in json.loads(result.stdout)["backbones"]}
    assert backbones["wide"]["plugin"] == "mario-wide:wide"
    assert "[model.wide]" in backbones["wide"]["options"]
    assert "--wide-width" in backbones["wide"]["options"]


def test_the_option_comes_from_file_env_and_flag_in_that_order(installed, tmp_path) -> None:
    def width(*args: str, extra=None) -> int:
        result = mario(installed, "config", "show", "--json", *args, cwd=tmp_path, extra=extra)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["model"]["wide"]["width"]

    assert width() == 32  # the plugin's default
    (tmp_path / "mario.toml").write_text("[model.wide]\nwidth = 24\n")
    assert width() == 24
    assert width(extra={"MARIO_MODEL__WIDE__WIDTH": "20"}) == 20
    assert width("--wide-width", "12", extra={"MARIO_MODEL__WIDE__WIDTH": "20"}) == 12
    shown = mario(installed, "config", "show", cwd=tmp_path)
    assert "[model.wide]" in shown.stdout and "width = 24" in shown.stdout


@pytest.mark.parametrize(
    ("args", "extra", "toml", "expected"),
    [
        (["--wide-width", "0"], {}, "", "flag --wide-width: model.wide.width = '0' is invalid"),
        ([], {"MARIO_MODEL__WIDE__WIDTH": "x"}, "", "env var MARIO_MODEL__WIDE__WIDTH"),
        ([], {}, "[model.wide]\nwidht = 3\n", "unknown key 'widht' in [model.wide]"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(
    installed, tmp_path, args, extra, toml, expected
) -> None:
    if toml:
        (tmp_path / "mario.toml").write_text(toml)
    result = mario(installed, "config", "show", *args, cwd=tmp_path, extra=extra)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_training_uses_the_backbone_with_its_option(installed, tmp_path) -> None:
    result = mario(
        installed,
        "train",
        "--backbone",
        "wide",
        "--wide-width",
        "8",
        *["--total-timesteps", "64", "--n-envs", "2", "--n-steps", "32", "--batch-size", "32"],
        *["--n-epochs", "1", "--ui", "quiet", "--artifacts-dir", str(tmp_path / "artifacts")],
        *["--run-name", "wide", "--vector-mode", "sync"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    final = tmp_path / "artifacts" / "runs" / "wide" / "checkpoints" / "final.pt"
    payload = torch.load(final, weights_only=True)
    convs = [v for k, v in payload["model"].items() if k.endswith("net.0.weight")]
    assert len(convs) == 1 and convs[0].shape[0] == 8  # width 8 convolution channels
    assert payload["config"]["model"]["wide"] == {"width": 8}
