"""Hint rules on crafted histories, the HintEngine's de-duplication, and diagnostics."""

from __future__ import annotations

import math
import shlex
import subprocess
import sys

import pytest

from mario_cli.config import MarioConfig, UiConfig
from mario_cli.diagnostics import BAD, OK, UNKNOWN, WARN, HintEngine, History, diagnose
from mario_cli.events import CheckpointSaved, EpisodeEnd, Hint, IterationStats, RunStarted
from mario_hints import RULES
from mario_hints.rules import (
    entropy_collapsed,
    kl_too_large,
    progress_plateau,
    updates_stalled,
    value_not_learning,
)

CKPT = "artifacts/runs/ppo-1-1/checkpoints/step_000102400.pt"


def healthy(**overrides: float) -> dict[str, float]:
    metrics = {
        "rollout/ep_rew_mean": 40.0,
        "rollout/avg_max_x_pos": 700.0,
        "train/approx_kl": 0.02,
        "train/clip_fraction": 0.12,
        "train/policy_gradient_loss": -0.01,
        "train/entropy_loss": -1.4,
        "train/explained_variance": 0.6,
        "train/value_loss": 0.4,
    }
    metrics.update(overrides)
    return metrics


STALLED = {
    "train/approx_kl": 0.0,
    "train/clip_fraction": 0.0,
    "train/policy_gradient_loss": 1e-7,
}


def history_of(iterations: list[dict[str, float]], checkpoint: str | None = CKPT) -> History:
    history = History(run_name="ppo-1-1", checkpoint=checkpoint)
    for i, metrics in enumerate(iterations, 1):
        history.steps.append(i * 2048)
        history.metrics.append(metrics)
    return history


def episodes_at(xs: list[int], cleared: bool = False, stage: str = "1-1") -> History:
    history = history_of([healthy()])
    for x in xs:
        history.episodes.append(
            {"return": 10.0, "length": 300, "max_x_pos": x, "cleared": cleared, "stage": stage}
        )
    return history


@pytest.fixture
def cfg() -> MarioConfig:
    return MarioConfig()


def parses_as_mario_resume(command: str) -> None:
    """The suggested line is one the real CLI accepts (flags exist, values validate)."""
    import typer

    from mario_cli.cli import app
    from mario_cli.config import load_config

    words = shlex.split(command)
    assert words[:2] == ["mario", "resume"]
    click_app = typer.main.get_command(app)
    resume = click_app.commands["resume"]
    ctx = resume.make_context("resume", words[2:])
    overrides: dict[str, dict[str, object]] = {}
    for name, value in ctx.params.items():
        if "__" in name and value is not None:
            section, key = name.split("__", 1)
            overrides.setdefault(section, {})[key] = value
    load_config(None, overrides)  # every value validates against the config models


# ------------------------------------------------------------ updates stalled
def test_updates_stalled_fires_after_stall_iterations(cfg: MarioConfig) -> None:
    k = cfg.ui.stall_iterations
    history = history_of([healthy()] * 3 + [healthy(**STALLED)] * k)
    [hint] = updates_stalled(history, cfg)
    assert hint.rule == "updates-stalled"
    assert hint.severity == "bad"
    assert hint.step == history.step
    assert hint.command.startswith(f"mario resume --init-model-path {CKPT} ")
    assert "--ent-coef 0.02" in hint.command
    assert "--learning-rate 0.0005" in hint.command
    assert "--normalize-advantage" in hint.command
    parses_as_mario_resume(hint.command)


def test_updates_stalled_silent_before_k_or_with_any_update(cfg: MarioConfig) -> None:
    k = cfg.ui.stall_iterations
    assert updates_stalled(history_of([healthy(**STALLED)] * (k - 1)), cfg) == []
    clipped = [healthy(**STALLED)] * (k - 1) + [healthy(**{**STALLED, "train/clip_fraction": 0.01})]
    assert updates_stalled(history_of(clipped), cfg) == []
    kl = [healthy(**STALLED)] * (k - 1) + [healthy(**{**STALLED, "train/approx_kl": 0.003})]
    assert updates_stalled(history_of(kl), cfg) == []
    assert updates_stalled(history_of([healthy()] * 20), cfg) == []


# ---------------------------------------------------------- entropy collapsed
def test_entropy_collapsed_fires_and_suggests_more_entropy_bonus(cfg: MarioConfig) -> None:
    n = cfg.ui.entropy_iterations
    history = history_of([healthy()] + [healthy(**{"train/entropy_loss": -0.03})] * n)
    [hint] = entropy_collapsed(history, cfg)
    assert hint.rule == "entropy-collapsed"
    assert "0.03 nats" in hint.message
    assert hint.command == f"mario resume --init-model-path {CKPT} --ent-coef 0.02"
    parses_as_mario_resume(hint.command)


def test_entropy_collapsed_silent_when_entropy_recovers(cfg: MarioConfig) -> None:
    n = cfg.ui.entropy_iterations
    low = healthy(**{"train/entropy_loss": -0.03})
    assert entropy_collapsed(history_of([low] * (n - 1) + [healthy()]), cfg) == []
    assert entropy_collapsed(history_of([low] * (n - 1)), cfg) == []
    # Low but above entropy_bad is a warning on the panel, not a hint.
    warn = healthy(**{"train/entropy_loss": -0.2})
    assert entropy_collapsed(history_of([warn] * 10), cfg) == []


# --------------------------------------------------------------- KL too large
def test_kl_too_large_fires_and_halves_the_learning_rate(cfg: MarioConfig) -> None:
    n = cfg.ui.kl_iterations
    history = history_of([healthy(**{"train/approx_kl": 0.4})] * n)
    [hint] = kl_too_large(history, cfg)
    assert hint.rule == "kl-too-large"
    assert "--learning-rate 0.000125" in hint.command
    assert f"--target-kl {cfg.ui.kl_warn:g}" in hint.command
    parses_as_mario_resume(hint.command)


def test_kl_too_large_silent_when_one_iteration_is_fine(cfg: MarioConfig) -> None:
    n = cfg.ui.kl_iterations
    high = healthy(**{"train/approx_kl": 0.4})
    assert kl_too_large(history_of([high] * (n - 1) + [healthy()]), cfg) == []
    assert kl_too_large(history_of([healthy(**{"train/approx_kl": 0.1})] * 10), cfg) == []


# ------------------------------------------------------- value not learning
def test_value_not_learning_fires_after_long_near_zero_explained_variance(
    cfg: MarioConfig,
) -> None:
    n = cfg.ui.explained_variance_iterations
    flat = [healthy(**{"train/explained_variance": (-1) ** i * 0.01}) for i in range(n)]
    [hint] = value_not_learning(history_of(flat), cfg)
    assert hint.rule == "value-not-learning"
    assert "--vf-coef 1" in hint.command
    assert "--gae-lambda 0.95" in hint.command
    parses_as_mario_resume(hint.command)


def test_value_not_learning_silent_when_value_head_explains_returns(cfg: MarioConfig) -> None:
    n = cfg.ui.explained_variance_iterations
    flat = healthy(**{"train/explained_variance": 0.01})
    assert value_not_learning(history_of([flat] * (n - 1)), cfg) == []
    assert value_not_learning(history_of([flat] * (n - 1) + [healthy()]), cfg) == []
    assert value_not_learning(history_of([healthy()] * 100), cfg) == []


# ---------------------------------------------------------- progress plateau
def test_plateau_at_the_pipe_suggests_progress_reward_and_simple_movement() -> None:
    cfg = MarioConfig()
    cfg.env.movement = "right_only"
    cfg.env.reward_mode = "clip"
    m = cfg.ui.plateau_episodes
    xs = [594 + (i % 5) - 2 for i in range(m - 5)] + [120, 200, 314, 400, 40]
    [hint] = progress_plateau(episodes_at(xs), cfg)
    assert hint.rule == "progress-plateau"
    assert "x ~ 594 on 1-1 (the tall pipe)" in hint.message
    assert f"{m - 5} of the last {m} episodes" in hint.message
    flags = hint.command.split(CKPT, 1)[1].split()
    assert flags == [
        "--reward-mode",
        "progress",
        "--stall-penalty",
        "0.01",
        "--movement",
        "simple",
        "--allow-partial-init",  # right_only -> simple changes the policy head
    ]
    parses_as_mario_resume(hint.command)


def test_plateau_at_the_goomba_with_progress_reward_raises_the_stall_penalty(
    cfg: MarioConfig,
) -> None:
    xs = [314] * cfg.ui.plateau_episodes
    [hint] = progress_plateau(episodes_at(xs), cfg)
    assert "(the first goomba)" in hint.message
    assert "--stall-penalty 0.02" in hint.command
    assert "--allow-partial-init" not in hint.command


def test_plateau_silent_when_episodes_spread_or_clear_or_too_few(cfg: MarioConfig) -> None:
    m = cfg.ui.plateau_episodes
    assert progress_plateau(episodes_at([594] * (m - 1)), cfg) == []
    spread = [300 + 40 * (i % 10) for i in range(m)]
    assert progress_plateau(episodes_at(spread), cfg) == []
    assert progress_plateau(episodes_at([3161] * m, cleared=True), cfg) == []
    # Fewer than plateau_share of the window at the same x.
    mixed = [594] * int(m * 0.6) + [900 + 50 * i for i in range(m - int(m * 0.6))]
    assert progress_plateau(episodes_at(mixed), cfg) == []


def test_plateau_elsewhere_names_no_obstacle_and_placeholder_checkpoint(cfg: MarioConfig) -> None:
    history = episodes_at([1234] * cfg.ui.plateau_episodes, stage="1-2")
    history.checkpoint = None
    [hint] = progress_plateau(history, cfg)
    assert "x ~ 1234 on 1-2:" in hint.message
    assert hint.command.startswith("mario resume --init-model-path <checkpoint> ")


# ------------------------------------------------------------------- engine
def test_builtin_rules_are_registered_through_the_entry_point() -> None:
    from mario_cli.plugins import PluginHost

    registry = PluginHost()["hints"]
    assert set(RULES) <= set(registry.names())
    for component in registry:
        if component.name in RULES:
            assert component.plugin == "mario-rl:hints"  # the `hints` entry point
            assert component.factory is RULES[component.name]


def test_engine_uses_registry_rules_by_default(cfg: MarioConfig) -> None:
    engine = HintEngine(cfg)
    assert set(RULES) <= set(engine.rules)


def stall_events(engine: HintEngine, start: int, count: int, metrics: dict[str, float]):
    hints = []
    for i in range(start, start + count):
        hints += engine.observe(IterationStats(i * 2048, i, 10**6, metrics))
    return hints


def test_engine_emits_a_persistent_hint_once_then_after_the_cooldown() -> None:
    cfg = MarioConfig()
    cfg.ui.hint_cooldown = 20
    engine = HintEngine(cfg, {"updates-stalled": updates_stalled})
    k = cfg.ui.stall_iterations
    assert (
        engine.observe(RunStarted("ppo-1-1", "/r", "ppo", "nature", "cpu", "e", 8, 1, 0, 1)) == []
    )
    hints = stall_events(engine, 1, k - 1, healthy(**STALLED))
    assert hints == []
    hints = stall_events(engine, k, 1, healthy(**STALLED))
    assert [h.rule for h in hints] == ["updates-stalled"]
    assert hints[0].step == k * 2048
    # Still stalled: silent until the cooldown has passed, then a reminder.
    assert stall_events(engine, k + 1, 19, healthy(**STALLED)) == []
    assert [h.rule for h in stall_events(engine, k + 20, 1, healthy(**STALLED))] == [
        "updates-stalled"
    ]


def test_engine_re_emits_a_hint_that_cleared_and_came_back(cfg: MarioConfig) -> None:
    engine = HintEngine(cfg, {"updates-stalled": updates_stalled})
    k = cfg.ui.stall_iterations
    assert len(stall_events(engine, 1, k, healthy(**STALLED))) == 1
    assert stall_events(engine, k + 1, 1, healthy()) == []  # cleared
    assert stall_events(engine, k + 2, k - 1, healthy(**STALLED)) == []
    assert len(stall_events(engine, 2 * k + 1, 1, healthy(**STALLED))) == 1


def test_engine_tracks_checkpoints_and_episodes_for_commands(cfg: MarioConfig) -> None:
    engine = HintEngine(cfg, {"progress-plateau": progress_plateau})
    engine.observe(CheckpointSaved(2048, "/runs/a b/step.pt", "periodic"))
    for i in range(cfg.ui.plateau_episodes):
        assert engine.observe(EpisodeEnd(i, 0, 5.0, 200, 314, False, "1-1")) == []
    [hint] = engine.observe(IterationStats(4096, 2, 10**6, healthy()))
    assert hint.command.startswith("mario resume --init-model-path '/runs/a b/step.pt' ")
    assert engine.observe(Hint(4096, "x", "info", "hints are not fed back")) == []


def test_a_failing_rule_warns_once_and_is_switched_off(cfg: MarioConfig) -> None:
    def broken(history: History, cfg: MarioConfig) -> list[Hint]:
        raise ZeroDivisionError("oops")

    engine = HintEngine(cfg, {"broken": broken, "kl-too-large": kl_too_large})
    [hint] = engine.observe(IterationStats(2048, 1, 10**6, healthy()))
    assert hint.rule == "broken" and "ZeroDivisionError: oops" in hint.message
    high = healthy(**{"train/approx_kl": 0.5})
    hints = stall_events(engine, 2, cfg.ui.kl_iterations, high)
    assert [h.rule for h in hints] == ["kl-too-large"]


def test_engine_keeps_a_bounded_history(cfg: MarioConfig) -> None:
    from mario_cli.diagnostics import MAX_ITERATIONS

    engine = HintEngine(cfg, {})
    for i in range(MAX_ITERATIONS + 10):
        engine.add_iteration(i, {"train/approx_kl": float(i)})
    assert len(engine.history.metrics) == MAX_ITERATIONS == len(engine.history.steps)
    assert engine.history.step == MAX_ITERATIONS + 9


# -------------------------------------------------------------- diagnostics
def test_diagnose_states_follow_the_configured_thresholds() -> None:
    ui = UiConfig(kl_warn=0.05, kl_bad=0.15, entropy_warn=0.3, entropy_bad=0.1)
    metrics = healthy(
        **{
            "train/approx_kl": 0.1,
            "train/clip_fraction": 0.6,
            "train/entropy_loss": -0.05,
            "train/explained_variance": 0.5,
            "train/value_loss": math.nan,
        }
    )
    readings = {r.name: r for r in diagnose(metrics, ui)}
    assert {name: r.state for name, r in readings.items()} == {
        "approx_kl": WARN,
        "clip_fraction": BAD,
        "entropy": BAD,
        "explained_variance": OK,
        "value_loss": BAD,
    }
    assert readings["entropy"].value == pytest.approx(0.05)
    assert (readings["approx_kl"].warn, readings["approx_kl"].bad) == ("> 0.05", "> 0.15")
    assert (readings["entropy"].warn, readings["entropy"].bad) == ("< 0.3", "< 0.1")
    assert all(r.state == UNKNOWN for r in diagnose({}, ui))


def test_hints_plugin_imports_neither_torch_nor_textual() -> None:
    code = (
        "import sys, mario_hints, mario_cli.diagnostics\n"
        "bad = [m for m in ('torch', 'textual') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
