"""Components that own their options: ``[<section>.<name>]`` tables, their flags and
variables, per-component defaults of section keys, and the old flat keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field

from mario_cli.api import ComponentSettings
from mario_cli.config import (
    MarioConfig,
    commented_defaults,
    key_path,
    load_config,
    set_by_path,
)
from mario_cli.errors import ConfigError
from mario_cli.hookspecs import hookimpl
from mario_cli.plugins import PluginHost, set_host


class DepthSettings(ComponentSettings):
    """A test backbone's options."""

    depth: int = Field(3, ge=1, description="Layers.")
    acts: list[str] = Field(default_factory=lambda: ["relu"], description="Activations.")


class SlowSettings(ComponentSettings):
    """A test algorithm that wants long rollouts and a small learning rate."""

    section_defaults: ClassVar[dict[str, Any]] = {"n_steps": 1024, "learning_rate": 1e-5}


class TestPlugin:
    @hookimpl
    def register_backbones(self, register: Any) -> None:
        register("deep", lambda obs_shape, cfg: cfg.settings_of("deep"), settings=DepthSettings)

    @hookimpl
    def register_algorithms(self, register: Any) -> None:
        register("slow", "mario_algos.ppo:PPO", settings=SlowSettings)


@pytest.fixture
def host() -> Iterator[PluginHost]:
    host = PluginHost(extra_plugins=[TestPlugin()])
    set_host(host)
    yield host
    set_host(None)


def test_a_component_table_comes_from_every_layer(host, tmp_path: Path) -> None:
    toml = tmp_path / "my.toml"
    toml.write_text('[model.deep]\ndepth = 5\nacts = ["tanh"]\n')
    assert load_config(toml, environ={}).model.settings_of("deep").depth == 5
    env = {"MARIO_MODEL__DEEP__DEPTH": "6"}
    assert load_config(toml, environ=env).model.deep.depth == 6
    flags = {"model": {"deep": {"depth": 7}}}
    cfg = load_config(toml, cli_overrides=flags, environ=env)
    assert cfg.model.deep.depth == 7 and cfg.model.deep.acts == ["tanh"]
    assert cfg.to_dict()["model"]["deep"] == {"depth": 7, "acts": ["tanh"]}
    assert load_config(environ={}).model.deep.depth == 3  # the component's default


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("[model.deep]\ndepth = 0\n", {}, "model.deep.depth = 0 is invalid"),
        ("[model.deep]\ndeep = 2\n", {}, "unknown key 'deep' in [model.deep]; its keys are: depth"),
        ("", {"MARIO_MODEL__DEEP__DEPTHS": "2"}, "unknown environment variable"),
        ("", {"MARIO_MODEL__DEEP__DEPTH": "0"}, "env var MARIO_MODEL__DEEP__DEPTH"),
        ("[model]\nwide = 2\n", {}, "(and the tables [model.deep]"),
    ],
)
def test_bad_component_values_name_the_key(host, tmp_path, toml, env, expected) -> None:
    path = tmp_path / "my.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_component_can_default_keys_of_its_section_while_in_use(host, tmp_path) -> None:
    slow = load_config(cli_overrides={"algo": {"algo": "slow"}}, environ={})
    assert (slow.algo.n_steps, slow.algo.learning_rate) == (1024, 1e-5)
    ppo = load_config(environ={})
    assert (ppo.algo.n_steps, ppo.algo.learning_rate) == (256, 2.5e-4)
    # Any layer that sets the key wins over the component's default.
    path = tmp_path / "my.toml"
    path.write_text('[algo]\nalgo = "slow"\nn_steps = 64\n')
    assert load_config(path, environ={}).algo.n_steps == 64
    flagged = load_config(cli_overrides={"algo": {"algo": "slow", "learning_rate": 1e-3}})
    assert flagged.algo.learning_rate == 1e-3 and flagged.algo.n_steps == 1024
    # A saved run keeps what it resolved to, whatever the component says now.
    resumed = load_config(base=slow.to_dict(), environ={})
    assert resumed.algo.n_steps == 1024


def test_a2c_uses_its_own_short_rollouts() -> None:
    a2c = load_config(cli_overrides={"algo": {"algo": "a2c"}}, environ={})
    assert (a2c.algo.n_steps, a2c.algo.learning_rate) == (32, 5e-4)
    ppo = load_config(environ={})
    assert (ppo.algo.n_steps, ppo.algo.learning_rate) == (256, 2.5e-4)


def test_the_repo_mario_toml_leaves_component_defaulted_keys_unset() -> None:
    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "mario.toml", {"algo": {"algo": "a2c"}}, environ={})
    assert cfg.algo.n_steps == 32
    text = commented_defaults()
    assert "# n_steps = 256" in text and "[model.impala]" in text and "[algo.impala]" in text


def test_old_flat_keys_still_work_with_a_one_line_notice(tmp_path, capsys) -> None:
    path = tmp_path / "old.toml"
    path.write_text("[model]\nimpala_blocks = 1\ntransformer_heads = 2\n")
    cfg = load_config(path, environ={"MARIO_MODEL__IMPALA_CHANNELS": "[8, 8]"})
    assert cfg.model.impala.blocks == 1 and cfg.model.impala.channels == [8, 8]
    assert cfg.model.transformer.heads == 2
    err = capsys.readouterr().err
    assert f"{path}: [model] impala_blocks is now [model.impala] blocks" in err
    assert "env var MARIO_MODEL__IMPALA_CHANNELS: [model] impala_channels is now" in err
    assert "(MARIO_MODEL__IMPALA__CHANNELS)" in err
    # Old runs' saved configs are read silently.
    saved = MarioConfig().to_dict()
    saved["model"].pop("impala")
    saved["model"]["impala_blocks"] = 3
    assert load_config(base=saved, environ={}).model.impala.blocks == 3
    assert "impala_blocks" not in capsys.readouterr().err


def test_tune_can_search_component_keys(host) -> None:
    cfg = load_config(environ={})
    assert key_path("model.deep.depth") == ("model", "deep", "depth")
    assert key_path("model.impala_blocks") == ("model", "impala", "blocks")  # legacy
    assert key_path("model.deep.nope") is None and key_path("model.deep") is None
    set_by_path(cfg, "model.deep.depth", 9)
    set_by_path(cfg, "model.impala_blocks", 1)
    assert cfg.model.deep.depth == 9 and cfg.model.impala.blocks == 1
    with pytest.raises(ConfigError, match="model.deep.depth = 0 is invalid"):
        set_by_path(cfg, "model.deep.depth", 0)
    with pytest.raises(ConfigError, match="unknown config key"):
        set_by_path(cfg, "model.deep", 1)


def test_the_factory_reads_its_own_settings(host) -> None:
    cfg = load_config(cli_overrides={"model": {"deep": {"depth": 4}}}, environ={})
    factory = host["backbones"].get("deep")
    assert factory((4, 84, 84), cfg.model).depth == 4


def test_settings_must_be_component_settings() -> None:
    class Bad:
        @hookimpl
        def register_backbones(self, register: Any) -> None:
            register("bad", lambda obs_shape, cfg: None, settings=dict)

    with pytest.raises(ConfigError, match="subclass of mario_cli.api.ComponentSettings"):
        PluginHost(extra_plugins=[Bad()])


def test_two_components_cannot_share_a_table_or_shadow_a_key() -> None:
    class Twin:
        @hookimpl
        def register_recurrent_cores(self, register: Any) -> None:
            register("impala", lambda features, cfg: None, settings=DepthSettings)

    with pytest.raises(ConfigError, match=r"both want a \[model.impala\] table"):
        PluginHost(extra_plugins=[Twin()]).settings_tables()

    class Shadow:
        @hookimpl
        def register_backbones(self, register: Any) -> None:
            register("hidden_size", lambda obs_shape, cfg: None, settings=DepthSettings)

    try:
        with pytest.raises(ConfigError, match="model.hidden_size is already a key"):
            set_host(PluginHost(extra_plugins=[Shadow()]))
    finally:
        set_host(None)


def test_tune_exports_component_keys_as_tables(tmp_path) -> None:
    import tomllib
    from types import SimpleNamespace

    from mario_cli.tuning import export_best

    best = SimpleNamespace(number=3, params={"model.impala.blocks": 1, "algo.gamma": 0.95})
    study = SimpleNamespace(best_trial=best, study_name="s", best_value=900.0)
    space = {"model.impala.blocks": {}, "algo.gamma": {}}
    path = export_best(study, space, tmp_path / "best.toml")
    exported = tomllib.loads(path.read_text())
    assert exported == {"model": {"impala": {"blocks": 1}}, "algo": {"gamma": 0.95}}
    assert load_config(path, environ={}).model.impala.blocks == 1
