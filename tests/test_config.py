"""Config layering: defaults < mario.toml < MARIO_* env vars < CLI flags, and its errors."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from mario_cli.config import (
    MarioConfig,
    chosen_settings,
    commented_defaults,
    load_config,
    set_by_path,
)
from mario_cli.errors import ConfigError
from tests.conftest import REPO, run_mario


def test_defaults_when_nothing_is_set() -> None:
    cfg = load_config(environ={})
    assert cfg.algo.gamma == 0.9
    assert cfg.env.env_id == "SuperMarioBros-1-1-v0"
    assert cfg.env.frame_skip == 4
    assert len(cfg.env.stages) == 32


def test_precedence_default_toml_env_flag(tmp_path: Path) -> None:
    toml = tmp_path / "mario.toml"
    toml.write_text("[algo]\ngamma = 0.8\nn_epochs = 7\n")
    assert load_config(environ={}).algo.gamma == 0.8  # ./mario.toml is found
    env = {"MARIO_ALGO__GAMMA": "0.7"}
    assert load_config(environ=env).algo.gamma == 0.7
    flags = {"algo": {"gamma": 0.6}}
    cfg = load_config(cli_overrides=flags, environ=env)
    assert cfg.algo.gamma == 0.6
    assert cfg.algo.n_epochs == 7  # untouched keys keep the lower layer's value


def test_chosen_settings_are_every_layer_above_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "mario.toml").write_text("[algo]\ngamma = 0.8\nn_epochs = 7\n")
    env = {"MARIO_ALGO__GAMMA": "0.7", "MARIO_ENV__N_ENVS": "4"}
    chosen = chosen_settings(None, {"algo": {"gamma": 0.6}}, env)
    assert chosen == {"algo": {"gamma": 0.6, "n_epochs": 7}, "env": {"n_envs": "4"}}
    other = tmp_path / "other.toml"
    other.write_text("[train]\nbest_by = 'rollout'\n")
    assert chosen_settings(other, None, {}) == {"train": {"best_by": "rollout"}}
    assert chosen_settings(None, None, {}) != {}  # ./mario.toml is found, as load_config does
    (tmp_path / "mario.toml").unlink()
    assert chosen_settings(None, None, {}) == {}


def test_explicit_config_path_replaces_local_file(tmp_path: Path) -> None:
    (tmp_path / "mario.toml").write_text("[algo]\ngamma = 0.8\n")
    other = tmp_path / "other.toml"
    other.write_text("[env]\nn_envs = 3\n")
    cfg = load_config(other, environ={})
    assert cfg.env.n_envs == 3
    assert cfg.algo.gamma == 0.9


def test_precedence_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "mario.toml").write_text("[algo]\ngamma = 0.8\nent_coef = 0.02\n")
    result = run_mario(
        "config", "show", "--json", "--gamma", "0.6", env={"MARIO_ALGO__ENT_COEF": "0.03"}
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["algo"]["gamma"] == 0.6
    assert data["algo"]["ent_coef"] == 0.03
    assert set(data) == {"env", "model", "algo", "replay", "repair", "train", "ui", "hints", "tune"}


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[algo]\nlearning_rat = 1e-4\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, environ={})
    message = str(err.value)
    assert str(bad) in message
    assert "algo.learning_rat" in message
    assert "learning_rate" in message  # the valid keys are listed


def test_bad_value_names_key_value_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[env]\nframe_skip = "fast"\n')
    with pytest.raises(ConfigError) as err:
        load_config(bad, environ={})
    assert str(bad) in str(err.value)
    assert "env.frame_skip" in str(err.value)
    assert "'fast'" in str(err.value)


def test_unknown_section_and_broken_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[trian]\nseed = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[trian\]"):
        load_config(bad, environ={})
    bad.write_text("[algo\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", environ={})


def test_bad_env_var_and_flag_are_attributed() -> None:
    with pytest.raises(ConfigError, match="MARIO_ALGO__GAMMA.*'2'"):
        load_config(environ={"MARIO_ALGO__GAMMA": "2"})
    with pytest.raises(ConfigError, match="unknown environment variable MARIO_ALGO__GAMA"):
        load_config(environ={"MARIO_ALGO__GAMA": "0.5"})
    with pytest.raises(ConfigError, match="flag --movement.*'sideways'"):
        load_config(cli_overrides={"env": {"movement": "sideways"}}, environ={})


def test_env_vars_come_only_from_the_environ_given(monkeypatch) -> None:
    monkeypatch.setenv("MARIO_ALGO__GAMMA", "0.5")
    assert load_config(environ={}).algo.gamma == MarioConfig().algo.gamma
    assert load_config(environ={"MARIO_ENV__STAGES": '["1-2"]'}).env.stages == ["1-2"]
    assert load_config().algo.gamma == 0.5  # None: the process environment


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--n-envs", "many"], {}, "flag --n-envs: env.n_envs = 'many'"),
        ([], {"MARIO_ENV__FRAME_SKIP": "0"}, "env var MARIO_ENV__FRAME_SKIP"),
        (["--config", "nope.toml"], {}, "nope.toml not found"),
        ([], {"MARIO_ENV__STAGES": "1-1"}, "env var MARIO_ENV__STAGES could not be parsed"),
        (["--impala-channels", "a,b"], {}, "flag --impala-channels: model.impala.channels"),
    ],
)
def test_cli_config_errors_are_one_line_exit_2(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run_mario("config", "show", *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_list_flag_and_none_value() -> None:
    result = run_mario(
        "config", "show", "--json", "--stages", "1-1, 2-3", "--target-kl", "none", "--per"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["env"]["stages"] == ["1-1", "2-3"]
    assert data["algo"]["target_kl"] is None
    assert data["replay"]["per"] is True


def test_repo_mario_toml_is_the_commented_defaults() -> None:
    text = (REPO / "mario.toml").read_text()
    assert text.strip() == commented_defaults().strip()
    parsed = tomllib.loads(text)
    defaults = MarioConfig().to_dict()
    for section, values in parsed.items():
        for key, value in values.items():
            assert defaults[section][key] == value, f"{section}.{key}"
    # every key is written or mentioned with its description
    for section, values in defaults.items():
        for key in values:
            assert key in text, f"{section}.{key} missing from mario.toml"


def test_config_init_writes_a_file_that_loads(tmp_path: Path) -> None:
    result = run_mario("config", "init", "my.toml")
    assert result.returncode == 0, result.stderr
    assert load_config(tmp_path / "my.toml", environ={}) == MarioConfig()
    again = run_mario("config", "init", "my.toml")
    assert again.returncode == 1
    assert "--force" in again.stderr


def test_set_by_path_validates() -> None:
    cfg = MarioConfig()
    set_by_path(cfg, "algo.gamma", 0.95)
    assert cfg.algo.gamma == 0.95
    with pytest.raises(ConfigError, match="algo.gamma"):
        set_by_path(cfg, "algo.gamma", 3.0)
    with pytest.raises(ConfigError, match="unknown config key"):
        set_by_path(cfg, "algo.nope", 1)


def test_before_issue_14_config_turns_off_only_the_learning_levers() -> None:
    # README compares the defaults with this file on a second stage: it must load, and
    # differ from today's defaults in exactly the levers issue 14 added.
    cfg = load_config(REPO / "docs" / "configs" / "before-issue-14.toml", environ={})
    assert cfg.env.jump_press is False
    assert "restarts" not in cfg.env.wrappers
    assert cfg.env.restarts.share == 0.0 and cfg.env.restarts.greedy_share == 0.0
    assert cfg.algo.ent_coef == cfg.algo.ent_coef_final == 0.01
    assert cfg.repair.repair_every == 0
    assert cfg.train.best_by == "rollout"

    def flat(data: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in data.items():
            if isinstance(value, dict):
                out |= flat(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value
        return out

    before, now = flat(cfg.to_dict()), flat(MarioConfig().to_dict())
    changed = {key for key in now if before[key] != now[key]}
    assert changed == {
        "env.jump_press",
        "env.wrappers",
        "env.restarts.share",
        "env.restarts.greedy_share",
        "algo.ent_coef",
        "repair.repair_every",
        "train.best_by",
    }
