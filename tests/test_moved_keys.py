"""Options that moved into the components that read them ([env.reward], [env.restarts],
[hints] and a [hints.<rule>] table per rule, [ui] mode), and the old keys, variables,
flags and tune keys that still work for one release. Pure config: nothing trains."""

from __future__ import annotations

import json
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import typer
from pydantic import Field
from typer.testing import CliRunner

from mario_cli import config
from mario_cli.api import ComponentSettings
from mario_cli.cli import app
from mario_cli.config import (
    MarioConfig,
    env_var_of,
    flag_of,
    key_path,
    load_config,
    set_by_path,
    to_toml,
)
from mario_cli.errors import ConfigError
from mario_cli.hookspecs import hookimpl
from mario_cli.plugins import PluginHost
from tests.conftest import REPO, plugin_host

# One key of each group that moved: old section and key, new key, a good and a bad value.
MOVED = [
    ("env", "restart_share", "env.restarts.share", 0.5, 2.0),
    ("env", "restart_runup_max_buckets", "env.restarts.runup_max_buckets", 8, -1),
    ("env", "death_penalty", "env.reward.death_penalty", 6.5, -1.0),
    ("env", "no_progress_terminate_steps", "env.reward.no_progress_cut_steps", 40, -1),
    ("ui", "kl_warn", "hints.kl_warn", 0.02, -1.0),
    ("ui", "hint_cooldown", "hints.cooldown", 20, 0),
    ("ui", "stall_iterations", "hints.updates_stalled.iterations", 7, 0),
    ("ui", "stall_progress_steps", "hints.progress_stalled.steps", 50_000, 0),
    ("ui", "ui", "ui.mode", "plain", "loud"),
]
IDS = [f"{section}.{old}" for section, old, *_ in MOVED]

# Every flag of an [env] or [ui] key that moved, as `mario train --help` listed it before.
OLD_FLAGS = {
    "env": (
        "--progress-scale --death-penalty --flag-bonus --stall-penalty --stall-steps "
        "--backward-penalty-scale --milestone-bonus --milestone-every "
        "--no-progress-terminate-steps --no-progress-terminate-penalty --score-scale "
        "--score-divisor --restart-share --restart-bucket-px --restart-runup-buckets "
        "--restart-runup-max-buckets --restart-states-per-bucket --restart-max-states"
    ),
    "ui": (
        "--ui --kl-warn --kl-bad --kl-iterations --clip-fraction-warn --clip-fraction-bad "
        "--entropy-warn --entropy-bad --entropy-iterations --explained-variance-warn "
        "--explained-variance-bad --explained-variance-zero --explained-variance-iterations "
        "--value-loss-warn --value-loss-bad --stall-iterations --stall-kl --stall-policy-loss "
        "--plateau-episodes --plateau-tolerance --plateau-share --stall-progress-steps "
        "--stall-progress-margin --hint-cooldown"
    ),
}


@pytest.fixture(autouse=True)
def _fresh_notices() -> Iterator[None]:
    """Notices are printed once per process: each test sees its own."""
    config._NOTICES.clear()
    yield
    config._NOTICES.clear()


def nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for part in reversed(path):
        value = {part: value}
    return value


def value_at(cfg: MarioConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def notices(err: str) -> list[str]:
    return [line for line in err.splitlines() if "is now" in line]


def show(*flags: str) -> tuple[dict[str, Any], str]:
    result = CliRunner().invoke(app, ["config", "show", "--json", *flags])
    if result.exception is not None:
        raise result.exception
    return json.loads(result.stdout), result.stderr


def path_of(dotted: str) -> tuple[str, ...]:
    return tuple(dotted.split("."))


# ------------------------------------------------------------- the new keys
@pytest.mark.parametrize(("section", "old", "new", "good", "bad"), MOVED, ids=IDS)
def test_a_moved_key_is_set_at_its_new_place_from_every_layer(
    tmp_path: Path, capsys, section, old, new, good, bad
) -> None:
    path = tmp_path / "new.toml"
    path.write_text(to_toml(nested(path_of(new), good)))
    assert value_at(load_config(path, environ={}), new) == good
    env = {env_var_of(path_of(new)): str(good)}
    assert value_at(load_config(environ=env), new) == good
    data, err = show(flag_of(path_of(new)), str(good))
    node: Any = data
    for part in path_of(new):
        node = node[part]
    assert node == good
    assert notices(err) == [] and notices(capsys.readouterr().err) == []


def test_the_new_flags_read_as_documented() -> None:
    assert flag_of(("env", "restarts", "share")) == "--restarts-share"
    assert flag_of(("env", "reward", "death_penalty")) == "--reward-death-penalty"
    assert flag_of(("hints", "progress_plateau", "episodes")) == "--progress-plateau-episodes"
    assert flag_of(("ui", "mode")) == "--ui"  # the display flag kept its name
    assert flag_of(("hints", "cooldown")) == "--hint-cooldown"


# ------------------------------------------------------------- the old keys
@pytest.mark.parametrize(("section", "old", "new", "good", "bad"), MOVED, ids=IDS)
def test_an_old_key_works_from_each_layer_with_one_notice_naming_the_new_key(
    tmp_path: Path, capsys, section, old, new, good, bad
) -> None:
    where = config.describe_path(path_of(new))  # e.g. "[env.restarts] share"
    path = tmp_path / "old.toml"
    path.write_text(to_toml({section: {old: good}}))
    assert value_at(load_config(path, environ={}), new) == good
    [notice] = notices(capsys.readouterr().err)
    assert f"{path}: [{section}] {old} is now {where}" in notice

    config._NOTICES.clear()
    old_var = env_var_of((section, old))
    assert value_at(load_config(environ={old_var: str(good)}), new) == good
    [notice] = notices(capsys.readouterr().err)
    assert f"env var {old_var}: [{section}] {old} is now {where}" in notice
    assert f"({env_var_of(path_of(new))})" in notice

    config._NOTICES.clear()
    old_flag, new_flag = "--" + old.replace("_", "-"), flag_of(path_of(new))
    data, err = show(old_flag, str(good))
    assert value_at(MarioConfig.model_validate(data), new) == good
    if old_flag == new_flag:  # the flag kept its spelling: nothing to say
        assert notices(err) == []
    else:
        [notice] = notices(err)
        assert f"flag {old_flag} is now {new_flag}" in notice

    config._NOTICES.clear()
    from mario_cli.tuning import validate_space

    validate_space({f"{section}.{old}": {"type": "categorical", "choices": [good]}})
    [notice] = notices(capsys.readouterr().err)
    assert f"[tune.space] {section}.{old} is now {new}" in notice
    cfg = MarioConfig()
    set_by_path(cfg, f"{section}.{old}", good)
    assert value_at(cfg, new) == good
    assert key_path(f"{section}.{old}") == path_of(new)


def test_every_old_key_has_a_new_home_and_its_flag_still_parses() -> None:
    command = typer.main.get_command(app)
    commands = [
        command.commands["train"],
        command.commands["resume"],
        command.commands["tune"],
        command.commands["bench"].commands["learn"],
        command.commands["config"].commands["show"],
    ]
    for section, flags in OLD_FLAGS.items():
        for old_flag in flags.split():
            old = old_flag.removeprefix("--").replace("-", "_")
            new = key_path(f"{section}.{old}")
            assert new is not None and new != (section, old), f"{section}.{old}"
            for cmd in commands:
                options = {name for p in cmd.params for name in p.opts}
                assert old_flag in options and flag_of(new) in options, (cmd.name, old_flag)


def test_old_flags_are_hidden_from_help_and_the_new_ones_shown() -> None:
    help_text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--restarts-share" in help_text and "--reward-death-penalty" in help_text
    assert "--updates-stalled-iterations" in help_text and "--ui" in help_text
    for old in ("--restart-share ", "--death-penalty ", "--stall-iterations "):
        assert old not in help_text


def test_a_whole_old_mario_toml_still_loads_with_one_notice_per_old_key(
    tmp_path: Path, capsys
) -> None:
    old = {
        "env": {"restart_share": 0.5, "restart_runup_buckets": 1, "death_penalty": 6.5},
        "ui": {"ui": "plain", "kl_bad": 0.2, "plateau_episodes": 60},
    }
    path = tmp_path / "mario.toml"
    path.write_text(to_toml(old))
    cfg = load_config(path, environ={})
    assert (cfg.env.restarts.share, cfg.env.restarts.runup_buckets) == (0.5, 1)
    assert cfg.env.reward.death_penalty == 6.5 and cfg.ui.mode == "plain"
    assert cfg.hints.kl_bad == 0.2 and cfg.hints.progress_plateau.episodes == 60
    assert len(notices(capsys.readouterr().err)) == 6


def test_a_new_key_in_a_higher_layer_wins_over_an_old_key_in_a_lower_one(tmp_path) -> None:
    path = tmp_path / "old.toml"
    path.write_text("[env]\nrestart_share = 0.5\n")
    cfg = load_config(path, environ={"MARIO_ENV__RESTARTS__SHARE": "0.2"})
    assert cfg.env.restarts.share == 0.2
    cfg = load_config(path, cli_overrides={"env": {"restarts": {"share": 0.3}}}, environ={})
    assert cfg.env.restarts.share == 0.3
    # and an old key in a higher layer wins over the new key in a lower one
    new = tmp_path / "new.toml"
    new.write_text("[env.restarts]\nshare = 0.5\n")
    cfg = load_config(new, environ={"MARIO_ENV__RESTART_SHARE": "0.1"})
    assert cfg.env.restarts.share == 0.1


def test_old_attribute_names_of_a_section_still_work_in_code(capsys) -> None:
    cfg = MarioConfig()
    cfg.env.no_progress_terminate_steps = 15  # a plugin or script written before the move
    assert cfg.env.reward.no_progress_cut_steps == 15 == cfg.env.no_progress_terminate_steps
    cfg.ui.ui = "plain"
    assert cfg.ui.mode == "plain"
    err = capsys.readouterr().err
    assert "env.no_progress_terminate_steps is now env.reward.no_progress_cut_steps" in err
    assert len(notices(err)) == 2  # one per old name, however often it is used
    with pytest.raises(ConfigError):
        set_by_path(cfg, "env.restart_share", 5.0)
    with pytest.raises(ValueError, match="less than or equal to 0.9"):
        cfg.env.restart_share = 5.0
    with pytest.raises(AttributeError, match=r"ui\.kl_warn is now hints\.kl_warn"):
        _ = cfg.ui.kl_warn  # another section: no way to reach it from [ui]


# -------------------------------------------------------------- bad values
@pytest.mark.parametrize(("section", "old", "new", "good", "bad"), MOVED, ids=IDS)
def test_a_bad_value_is_one_line_naming_the_new_key(
    tmp_path: Path, section, old, new, good, bad
) -> None:
    messages = []
    for data in (nested(path_of(new), bad), {section: {old: bad}}):
        path = tmp_path / "bad.toml"
        path.write_text(to_toml(data))
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={})
        messages.append(str(info.value))
        assert str(path) in messages[-1]
    for name in (env_var_of(path_of(new)), env_var_of((section, old))):
        with pytest.raises(ConfigError) as info:
            load_config(environ={name: str(bad)})
        messages.append(str(info.value))
        assert f"env var {env_var_of(path_of(new))}" in messages[-1]
    for flag in {flag_of(path_of(new)), "--" + old.replace("_", "-")}:
        with pytest.raises(ConfigError) as info:
            show(flag, str(bad))
        messages.append(str(info.value))
        assert f"flag {flag_of(path_of(new))}" in messages[-1]
    for message in messages:
        assert f"{new} = " in message and "is invalid" in message and "\n" not in message


def test_frontier_restarts_still_need_the_restarts_wrapper(tmp_path: Path) -> None:
    reason = (
        'frontier restarts need "restarts" in env.wrappers (last, after frame_stack); '
        "add it, or set --restarts-share 0"
    )
    for text in (
        '[env]\nwrappers = ["frame_skip"]\n[env.restarts]\nshare = 0.5\n',
        '[env]\nwrappers = ["frame_skip"]\nrestart_share = 0.5\n',
    ):
        path = tmp_path / "restarts.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={})
        assert str(info.value) == f"{path}: env.restarts.share = 0.5 is invalid: {reason}"
    with pytest.raises(ConfigError) as info:
        show("--wrappers", "frame_skip", "--restarts-share", "0.5")
    assert str(info.value).startswith("flag --restarts-share: env.restarts.share = '0.5'")
    no_restarts = {"env": {"wrappers": ["frame_skip"], "restarts": {"share": 0.0}}}
    cfg = load_config(cli_overrides=no_restarts, environ={})
    with pytest.raises(ConfigError, match="env.restarts.share = 0.5 is invalid: frontier"):
        set_by_path(cfg, "env.restart_share", 0.5)  # a tune space key
    assert cfg.env.restarts.share == 0.0
    # listed, or left at 0, restarts are fine; so is an old run's config without them
    assert load_config(cli_overrides={"env": {"restarts": {"share": 0.5}}}).env.restarts.share
    assert MarioConfig.model_validate({"env": {"wrappers": ["frame_skip"]}}).env.restarts.share == 0


# ------------------------------------------------------------- where listed
def test_config_show_init_and_plugins_list_the_new_tables(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["config", "show"], env={"COLUMNS": "200"})
    for table in ("[env.reward]", "[env.restarts]", "[hints]", "[hints.progress_stalled]"):
        assert table in result.stdout
    assert 'mode = "auto"' in result.stdout and "no_progress_cut_steps = 300" in result.stdout
    text = config.commented_defaults()
    parsed = tomllib.loads(text)
    assert parsed["env"]["restarts"]["share"] == 0.5 and "restart_share" not in parsed["env"]
    assert parsed["hints"]["updates_stalled"]["iterations"] == 5 and parsed["ui"] == {
        "mode": "auto"
    }
    listing = json.loads(CliRunner().invoke(app, ["plugins", "--json"]).stdout)
    options = {item["name"]: item["options"] for kind in listing.values() for item in kind}
    assert options["reward"].startswith("[env.reward] --reward-progress-scale")
    assert "--reward-no-progress-cut-steps" in options["reward"]
    assert options["restarts"].startswith("[env.restarts] --restarts-share")
    assert options["progress-plateau"] == (
        "[hints.progress_plateau] --progress-plateau-episodes --progress-plateau-tolerance "
        "--progress-plateau-share"
    )


def test_the_defaults_did_not_change() -> None:
    cfg = MarioConfig()
    reward = cfg.env.reward
    assert (reward.progress_scale, reward.death_penalty, reward.flag_bonus) == (0.1, 2.5, 5.0)
    assert (reward.stall_penalty, reward.stall_steps, reward.backward_penalty_scale) == (
        0.01,
        50,
        0.0,
    )
    assert (reward.milestone_bonus, reward.milestone_every) == (0.0, 500)
    assert (reward.no_progress_cut_steps, reward.no_progress_cut_penalty) == (300, 0.0)
    assert (reward.score_scale, reward.score_divisor) == (0.1, 40.0)
    restarts = cfg.env.restarts
    assert (restarts.share, restarts.bucket_px, restarts.runup_buckets) == (0.5, 32, 3)
    assert (restarts.runup_max_buckets, restarts.states_per_bucket, restarts.max_states) == (
        12,
        2,
        64,
    )
    assert (restarts.greedy_share, restarts.greedy_restarts) == (0.2, 0.7)
    algo = cfg.algo
    assert (algo.ent_coef, algo.ent_coef_final, algo.ent_decay_steps) == (0.04, 0.01, 400_000)
    assert (cfg.repair.repair_every, cfg.repair.repair_window, cfg.env.jump_press) == (
        8192,
        24,
        True,
    )
    hints = cfg.hints
    assert (hints.kl_warn, hints.kl_bad, hints.entropy_bad, hints.cooldown) == (0.05, 0.15, 0.1, 50)
    assert (hints.updates_stalled.iterations, hints.updates_stalled.kl) == (5, 1e-5)
    assert hints.value_not_learning.model_dump() == {"near_zero": 0.05, "iterations": 30}
    assert hints.progress_plateau.model_dump() == {"episodes": 50, "tolerance": 16, "share": 0.8}
    assert hints.progress_stalled.model_dump() == {"steps": 100_000, "margin": 50}
    assert (cfg.env.reward_mode, cfg.ui.mode) == ("progress", "auto")


# ------------------------------------------------------ old runs and results
def test_old_saved_configs_and_results_load_silently(capsys) -> None:
    results = sorted((REPO / "docs" / "results").glob("*.json"))
    assert results
    for path in results:
        saved = json.loads(path.read_text())["config"]
        cfg = load_config(base=saved, environ={})  # a run's config.toml, or resume
        assert MarioConfig.model_validate(saved) == cfg  # a checkpoint's embedded config
        if "hints" in saved:  # a result written since the move
            plateau, mode = saved["hints"]["progress_plateau"]["episodes"], saved["ui"]["mode"]
        else:
            plateau, mode = saved["ui"]["plateau_episodes"], saved["ui"]["ui"]
        assert cfg.hints.progress_plateau.episodes == plateau
        assert cfg.ui.mode == mode
    spread = json.loads((REPO / "docs/results/jump-restarts-ent04-spread18-150k.json").read_text())
    cfg = load_config(base=spread["config"], environ={})
    restarts = cfg.env.restarts
    assert (restarts.share, restarts.runup_buckets, restarts.runup_max_buckets) == (0.5, 1, 8)
    assert (
        cfg.env.reward.no_progress_cut_steps
        == spread["config"]["env"]["no_progress_terminate_steps"]
    )
    assert notices(capsys.readouterr().err) == []


def test_bench_learn_results_show_their_variant_as_the_flags_of_today() -> None:
    from mario_cli.cli.bench import _variant_flags

    spread = json.loads((REPO / "docs/results/jump-restarts-ent04-spread18-150k.json").read_text())
    assert _variant_flags(spread["variant"]) == (
        "--jump-press True --restarts-share 0.5 --restarts-runup-buckets 1 "
        "--restarts-runup-max-buckets 8 --ent-coef 0.04"
    )
    death = json.loads((REPO / "docs/results/jump-restarts-ent04-death65-150k.json").read_text())
    assert "--reward-death-penalty 6.5" in _variant_flags(death["variant"])
    new = {"env": {"restarts": {"share": "0.5"}}, "ui": {"mode": "plain"}}
    assert _variant_flags(new) == "--restarts-share 0.5 --ui plain"


def test_the_hint_engine_keeps_the_longest_window_a_rule_asks_for() -> None:
    from mario_cli.diagnostics import MAX_EPISODES, MAX_ITERATIONS, HintEngine
    from mario_cli.events import EpisodeEnd, IterationStats
    from mario_hints.rules import progress_plateau, updates_stalled

    cfg = MarioConfig()
    cfg.hints.updates_stalled.iterations = MAX_ITERATIONS + 50
    engine = HintEngine(cfg, {"updates-stalled": updates_stalled})
    stalled = {"train/approx_kl": 0.0, "train/clip_fraction": 0.0}
    stalled["train/policy_gradient_loss"] = 0.0
    fired = []
    for i in range(1, MAX_ITERATIONS + 60):
        fired += [i for _ in engine.observe(IterationStats(i * 2048, i, 10**7, stalled))]
    assert fired == [MAX_ITERATIONS + 50]
    assert len(engine.history.metrics) == MAX_ITERATIONS + 50

    cfg.hints.progress_plateau.episodes = MAX_EPISODES + 20
    engine = HintEngine(cfg, {"progress-plateau": progress_plateau})
    assert engine.observe(IterationStats(2048, 1, 10**7, {})) == []
    for i in range(MAX_EPISODES + 20):
        engine.observe(EpisodeEnd(i, 0, 5.0, 200, 314, False, "1-1"))
    [hint] = engine.observe(IterationStats(4096, 2, 10**7, {}))
    assert f"{MAX_EPISODES + 20} of the last {MAX_EPISODES + 20} episodes" in hint.message


def test_bench_learn_seeds_train_quietly() -> None:
    from mario_cli.learnbench import seed_config

    cfg = seed_config(load_config(cli_overrides={"ui": {"mode": "plain"}}, environ={}), 3, "r")
    assert (cfg.ui.mode, cfg.train.seed, cfg.train.run_name) == ("quiet", 3, "r")


# ----------------------------------------- the mechanism, for any component
class DeepSettings(ComponentSettings):
    """A test backbone whose option was a key of another section."""

    legacy_keys: ClassVar[dict[str, str]] = {"train.deep_layers": "layers"}

    layers: int = Field(3, ge=1, description="Layers.")


class DeepPlugin:
    @hookimpl
    def register_backbones(self, register: Any) -> None:
        register("deep-net", lambda obs_shape, cfg: None, settings=DeepSettings)


@pytest.fixture
def deep_host() -> Iterator[PluginHost]:
    with plugin_host(DeepPlugin()) as host:
        yield host


def test_a_component_can_take_over_a_key_of_another_section(
    deep_host, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "old.toml"
    path.write_text("[train]\ndeep_layers = 4\n")
    cfg = load_config(path, environ={})
    assert cfg.model.deep_net.layers == 4 and cfg.model.settings_of("deep-net").layers == 4
    [notice] = notices(capsys.readouterr().err)
    assert "[train] deep_layers is now [model.deep_net] layers" in notice
    env = {"MARIO_TRAIN__DEEP_LAYERS": "5"}
    assert load_config(environ=env).model.deep_net.layers == 5
    assert "(MARIO_MODEL__DEEP_NET__LAYERS)" in capsys.readouterr().err
    assert load_config(environ={"MARIO_MODEL__DEEP_NET__LAYERS": "6"}).model.deep_net.layers == 6
    assert key_path("train.deep_layers") == ("model", "deep_net", "layers")
    saved = {"train": {"deep_layers": 2}}
    assert MarioConfig.model_validate(saved).model.deep_net.layers == 2
    assert load_config(base=saved, environ={}).model.deep_net.layers == 2
    assert notices(capsys.readouterr().err) == []
    path.write_text("[train]\ndeep_layers = 0\n")
    with pytest.raises(ConfigError, match=r"model\.deep_net\.layers = 0 is invalid"):
        load_config(path, environ={})


def test_a_legacy_key_must_name_an_own_key() -> None:
    class Wrong(ComponentSettings):
        legacy_keys: ClassVar[dict[str, str]] = {"ui.old": "missing"}

        depth: int = 1

    class WrongPlugin:
        @hookimpl
        def register_backbones(self, register: Any) -> None:
            register("wrong", lambda obs_shape, cfg: None, settings=Wrong)

    with (
        pytest.raises(ConfigError, match="maps the old key 'ui.old' to 'missing'"),
        plugin_host(WrongPlugin()),
    ):
        pass


def test_the_old_optimiser_name_still_imports_with_a_warning() -> None:
    import mario_cli.api as api

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = api.Optimiser
    assert old is api.GradientStepper
    assert any("now GradientStepper" in str(w.message) for w in caught)
    assert "Optimiser" not in api.__all__
