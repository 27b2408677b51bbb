"""Hint rules on crafted histories, the HintEngine's de-duplication, and diagnostics."""

from __future__ import annotations

import math
import shlex
import subprocess
import sys

import pytest

from mario_cli.config import HintsConfig, MarioConfig
from mario_cli.diagnostics import (
    BAD,
    OK,
    UNKNOWN,
    WARN,
    HintEngine,
    History,
    StepWindow,
    diagnose,
)
from mario_cli.events import CheckpointSaved, Episode, EpisodeEnd, Hint, IterationStats, RunStarted
from mario_hints import RULES
from mario_hints.rules import (
    entropy_collapsed,
    kl_too_large,
    progress_plateau,
    progress_stalled,
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
        history.episodes.append(Episode(10.0, 300, x, cleared, stage))
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
            *path, key = name.split("__")
            node = overrides
            for part in path:
                node = node.setdefault(part, {})
            node[key] = value
    load_config(None, overrides)  # every value validates against the config models


# ------------------------------------------------------------ updates stalled
def test_updates_stalled_fires_after_stall_iterations(cfg: MarioConfig) -> None:
    k = cfg.hints.updates_stalled.iterations
    history = history_of([healthy()] * 3 + [healthy(**STALLED)] * k)
    [hint] = updates_stalled(history, cfg)
    assert hint.rule == "updates-stalled"
    assert hint.severity == "bad"
    assert hint.step == history.step
    assert hint.command.startswith(f"mario resume --init-model-path {CKPT} ")
    assert "--ent-coef 0.08" in hint.command
    assert "--learning-rate 0.0005" in hint.command
    assert "--normalize-advantage" in hint.command
    parses_as_mario_resume(hint.command)


def test_updates_stalled_silent_before_k_or_with_any_update(cfg: MarioConfig) -> None:
    k = cfg.hints.updates_stalled.iterations
    assert updates_stalled(history_of([healthy(**STALLED)] * (k - 1)), cfg) == []
    clipped = [healthy(**STALLED)] * (k - 1) + [healthy(**{**STALLED, "train/clip_fraction": 0.01})]
    assert updates_stalled(history_of(clipped), cfg) == []
    kl = [healthy(**STALLED)] * (k - 1) + [healthy(**{**STALLED, "train/approx_kl": 0.003})]
    assert updates_stalled(history_of(kl), cfg) == []
    assert updates_stalled(history_of([healthy()] * 20), cfg) == []


# ---------------------------------------------------------- entropy collapsed
def test_entropy_collapsed_fires_and_suggests_more_entropy_bonus(cfg: MarioConfig) -> None:
    n = cfg.hints.entropy_collapsed.iterations
    history = history_of([healthy()] + [healthy(**{"train/entropy_loss": -0.03})] * n)
    [hint] = entropy_collapsed(history, cfg)
    assert hint.rule == "entropy-collapsed"
    assert "0.03 nats" in hint.message
    assert hint.command == f"mario resume --init-model-path {CKPT} --ent-coef 0.08"
    parses_as_mario_resume(hint.command)


def test_entropy_collapsed_silent_when_entropy_recovers(cfg: MarioConfig) -> None:
    n = cfg.hints.entropy_collapsed.iterations
    low = healthy(**{"train/entropy_loss": -0.03})
    assert entropy_collapsed(history_of([low] * (n - 1) + [healthy()]), cfg) == []
    assert entropy_collapsed(history_of([low] * (n - 1)), cfg) == []
    # Low but above entropy_bad is a warning on the panel, not a hint.
    warn = healthy(**{"train/entropy_loss": -0.2})
    assert entropy_collapsed(history_of([warn] * 10), cfg) == []


@pytest.mark.parametrize(
    "rate", ["rollout/clear_rate", "rollout/greedy_clear_rate", "best/check_clear_rate"]
)
def test_entropy_collapsed_is_silent_while_the_policy_clears(cfg: MarioConfig, rate: str) -> None:
    n = cfg.hints.entropy_collapsed.iterations
    low = {"train/entropy_loss": -0.05}
    clearing = history_of([healthy(**low)] * (n - 1) + [healthy(**low, **{rate: 0.6})])
    assert entropy_collapsed(clearing, cfg) == []
    rarely = history_of([healthy(**low)] * (n - 1) + [healthy(**low, **{rate: 0.3})])
    assert [h.rule for h in entropy_collapsed(rarely, cfg)] == ["entropy-collapsed"]


# --------------------------------------------------------------- KL too large
def test_kl_too_large_fires_and_halves_the_learning_rate(cfg: MarioConfig) -> None:
    n = cfg.hints.kl_too_large.iterations
    history = history_of([healthy(**{"train/approx_kl": 0.4})] * n)
    [hint] = kl_too_large(history, cfg)
    assert hint.rule == "kl-too-large"
    assert "--learning-rate 0.000125" in hint.command
    assert f"--target-kl {cfg.hints.kl_warn:g}" in hint.command
    parses_as_mario_resume(hint.command)


def test_kl_too_large_silent_when_one_iteration_is_fine(cfg: MarioConfig) -> None:
    n = cfg.hints.kl_too_large.iterations
    high = healthy(**{"train/approx_kl": 0.4})
    assert kl_too_large(history_of([high] * (n - 1) + [healthy()]), cfg) == []
    assert kl_too_large(history_of([healthy(**{"train/approx_kl": 0.1})] * 10), cfg) == []


# ------------------------------------------------------- value not learning
def test_value_not_learning_fires_after_long_near_zero_explained_variance(
    cfg: MarioConfig,
) -> None:
    n = cfg.hints.value_not_learning.iterations
    flat = [healthy(**{"train/explained_variance": (-1) ** i * 0.01}) for i in range(n)]
    [hint] = value_not_learning(history_of(flat), cfg)
    assert hint.rule == "value-not-learning"
    assert "--vf-coef 1" in hint.command
    assert "--gae-lambda 0.95" in hint.command
    parses_as_mario_resume(hint.command)


def test_value_not_learning_silent_when_value_head_explains_returns(cfg: MarioConfig) -> None:
    n = cfg.hints.value_not_learning.iterations
    flat = healthy(**{"train/explained_variance": 0.01})
    assert value_not_learning(history_of([flat] * (n - 1)), cfg) == []
    assert value_not_learning(history_of([flat] * (n - 1) + [healthy()]), cfg) == []
    assert value_not_learning(history_of([healthy()] * 100), cfg) == []


# ---------------------------------------------------------- progress plateau
def test_plateau_at_the_pipe_suggests_progress_reward_and_simple_movement() -> None:
    cfg = MarioConfig()
    cfg.env.movement = "right_only"
    cfg.env.reward_mode = "clip"
    m = cfg.hints.progress_plateau.episodes
    xs = [594 + (i % 5) - 2 for i in range(m - 5)] + [120, 200, 314, 400, 40]
    [hint] = progress_plateau(episodes_at(xs), cfg)
    assert hint.rule == "progress-plateau"
    assert "x ~ 594 on 1-1 (the tall pipe)" in hint.message
    assert f"{m - 5} of the last {m} episodes" in hint.message
    flags = hint.command.split(CKPT, 1)[1].split()
    assert flags == [
        "--reward-mode",
        "progress",
        "--reward-stall-penalty",
        "0.01",
        "--movement",
        "simple",
        "--allow-partial-init",  # right_only -> simple changes the policy head
    ]
    parses_as_mario_resume(hint.command)


def test_plateau_with_the_reward_advice_taken_names_the_next_lever(cfg: MarioConfig) -> None:
    xs = [1130] * cfg.hints.progress_plateau.episodes
    cfg.env.jump_press, cfg.env.restarts.share = False, 0.0
    [hint] = progress_plateau(episodes_at(xs), cfg)
    assert "(the first pit)" in hint.message
    assert hint.command == f"mario resume --init-model-path {CKPT} --jump-press"
    cfg.env.jump_press = True
    [hint] = progress_plateau(episodes_at(xs), cfg)
    assert "try practice from saved states" in hint.message
    assert hint.command == f"mario resume --init-model-path {CKPT} --restarts-share 0.5"
    cfg.env.restarts.share = 0.5
    [hint] = progress_plateau(episodes_at(xs), cfg)
    assert hint.command == f"mario resume --init-model-path {CKPT} --ent-coef 0.08"
    parses_as_mario_resume(hint.command)


def test_plateau_silent_when_episodes_spread_or_clear_or_too_few(cfg: MarioConfig) -> None:
    m = cfg.hints.progress_plateau.episodes
    assert progress_plateau(episodes_at([594] * (m - 1)), cfg) == []
    spread = [300 + 40 * (i % 10) for i in range(m)]
    assert progress_plateau(episodes_at(spread), cfg) == []
    assert progress_plateau(episodes_at([3161] * m, cleared=True), cfg) == []
    # Fewer than plateau_share of the window at the same x.
    mixed = [594] * int(m * 0.6) + [900 + 50 * i for i in range(m - int(m * 0.6))]
    assert progress_plateau(episodes_at(mixed), cfg) == []


def test_plateau_elsewhere_names_no_obstacle_and_placeholder_checkpoint(cfg: MarioConfig) -> None:
    history = episodes_at([1234] * cfg.hints.progress_plateau.episodes, stage="1-2")
    history.checkpoint = None
    [hint] = progress_plateau(history, cfg)
    assert "x ~ 1234 on 1-2:" in hint.message
    assert hint.command.startswith("mario resume --init-model-path <checkpoint> ")


# ---------------------------------------------------------- progress stalled
def plateau_x(i: int) -> float:
    """A rolling avg_max_x_pos wandering within ±50 px of 800, as measured on 1-1."""
    return 800.0 + (i * 37) % 101 - 50


def plateau_episodes() -> list[EpisodeEnd]:
    """100 episodes: 40 at the tall pipe, 20 at the first goomba, 12 at the third pipe."""
    xs = [594 + (i % 5) - 2 for i in range(42)] + [314 + (i % 3) - 1 for i in range(20)]
    xs += [722] * 12 + [1000 + 40 * i for i in range(26)]  # 26 spread out
    ends = [EpisodeEnd(0, i % 8, 40.0, 400, x, False, "1-1") for i, x in enumerate(xs)]
    ends[40:42] = [EpisodeEnd(0, 0, 300.0, 900, 3161, True, "1-1")] * 2  # 40 at the pipe
    return ends


def feed(engine: HintEngine, xs: list[float], clear_rate: float = 0.02, start: int = 1):
    """One IterationStats per 2,048 agent steps; returns (step, hint) for each new hint."""
    fired = []
    for i, x in enumerate(xs, start):
        metrics = healthy(**{"rollout/avg_max_x_pos": x, "rollout/clear_rate": clear_rate})
        fired += [
            (i * 2048, h) for h in engine.observe(IterationStats(i * 2048, i, 10**7, metrics))
        ]
    return fired


def stalled_engine(cfg: MarioConfig) -> HintEngine:
    engine = HintEngine(cfg, {"progress-stalled": progress_stalled})
    engine.observe(CheckpointSaved(2048, CKPT, "periodic"))
    for episode in plateau_episodes():
        engine.observe(episode)
    return engine


def levers_on() -> MarioConfig:
    """Jump press and restarts on: the stall hint's remaining lever is exploration."""
    cfg = MarioConfig()
    cfg.env.jump_press = True
    cfg.env.restarts.share = 0.5
    return cfg


def test_progress_stalled_names_where_episodes_end_and_more_exploration() -> None:
    engine = stalled_engine(levers_on())
    # 150k agent steps at 800 ± 50. The first point is 100k steps old at step 102,400,
    # but it (750) and the next (787) are more than 50 px below the later best (849);
    # with the third (824) the window has risen only 25 px: it fires, once.
    fired = feed(engine, [plateau_x(i) for i in range(74)])
    assert [(step, h.rule) for step, h in fired] == [(106496, "progress-stalled")]
    hint = fired[0][1]
    assert hint.step == 106496 and hint.severity == "warn"
    assert hint.message == (
        "rollout/avg_max_x_pos has not risen more than 50 px in 100,000 agent steps "
        "(best 824 before, 850 since), clear rate 2%; the last 100 episodes on 1-1 end at "
        "x ≈ 594 (40%, the tall pipe), x ≈ 314 (20%, the first goomba), "
        "x ≈ 722 (12%, the third pipe): more exploration may get the agent past them"
    )
    assert hint.command == f"mario resume --init-model-path {CKPT} --ent-coef 0.08"
    parses_as_mario_resume(hint.command)


def test_progress_stalled_quiet_while_rising_early_or_clearing(cfg: MarioConfig) -> None:
    # Rising 2 px per 2,048 steps: ~98 px per window, more than the 50 px margin.
    assert feed(stalled_engine(cfg), [300.0 + 2 * i for i in range(150)]) == []
    # A plateau shorter than the window.
    assert feed(stalled_engine(cfg), [plateau_x(i) for i in range(49)]) == []
    # Clearing most episodes: a flat average is success, not a stall.
    assert feed(stalled_engine(cfg), [3000.0] * 100, clear_rate=0.6) == []
    # No avg_max_x_pos at all (no episode ended yet).
    engine = stalled_engine(cfg)
    metrics = {"train/approx_kl": 0.02}
    for i in range(1, 100):
        assert engine.observe(IterationStats(i * 2048, i, 10**7, metrics)) == []


def test_progress_stalled_counts_agent_steps_not_iterations() -> None:
    cfg = MarioConfig()
    cfg.hints.progress_stalled.steps = 20_000
    cfg.hints.progress_stalled.margin = 10

    def run(xs: list[float]) -> tuple[HintEngine, list[int]]:
        # 256 agent steps per iteration (--n-steps 32 on 8 envs): 78 iterations per window.
        engine = HintEngine(cfg, {"progress-stalled": progress_stalled})
        fired = []
        for i, x in enumerate(xs, 1):
            metrics = healthy(**{"rollout/avg_max_x_pos": x, "rollout/clear_rate": 0.0})
            fired += [i for _ in engine.observe(IterationStats(i * 256, i, 10**7, metrics))]
        return engine, fired

    engine, fired = run([600.0 + i % 7 for i in range(1, 200)])
    # At step 80 * 256 = 20,480 the first point (step 256) is more than 20,000 steps old.
    assert fired[0] == 80
    # The window keeps one point per 400 steps (20,000 / 50) plus the one at its start,
    # however many iterations it spans.
    assert len(engine.history.max_x.points) == 51
    assert len(engine.history.metrics) == 199
    # A rise of 11 px (> the 10 px margin) within the window clears it.
    engine, fired = run([600.0] * 80 + [611.0] * 20)
    assert fired == [80]
    assert progress_stalled(engine.history, cfg) == []


def test_progress_stalled_respects_the_cooldown() -> None:
    cfg = levers_on()
    cfg.hints.cooldown = 20
    engine = stalled_engine(cfg)
    fired = feed(engine, [plateau_x(i) for i in range(50 + 45)])
    # First at iteration 52, reminded once 20 iterations later, and again 20 after that.
    assert [step // 2048 for step, _ in fired] == [52, 72, 92]


def test_where_episodes_end_is_spread_or_per_stage() -> None:
    cfg = levers_on()
    cfg.hints.progress_stalled.steps = 10_000
    history = History()
    history.max_x = StepWindow(10_000, 200)
    for i, x in enumerate([700.0] * 60, 1):
        history.steps.append(i * 256)
        history.metrics.append({"rollout/avg_max_x_pos": x})
        history.max_x.add(i * 256, x)
    for x in range(150, 2150, 100):  # no two within ±16 px
        history.episodes.append(Episode(0.0, 1, x, False, "1-1"))
    [hint] = progress_stalled(history, cfg)
    assert hint.message.endswith("clear rate 0%: more exploration may find a way further")
    assert "10,000 agent steps (best 700 before, 700 since)" in hint.message
    assert hint.command == "mario resume --init-model-path <checkpoint> --ent-coef 0.08"
    for stage in ["1-1", "1-2"] * 5:
        history.episodes.append(Episode(0.0, 1, 594, False, stage))
    [hint] = progress_stalled(history, cfg)
    assert "the last 30 episodes end at x ≈ 594 on 1-1 (17%, the tall pipe), " in hint.message
    assert "x ≈ 594 on 1-2 (17%):" in hint.message


def test_progress_stalled_suggests_the_strongest_lever_still_off() -> None:
    cfg = MarioConfig()
    cfg.env.jump_press, cfg.env.restarts.share = False, 0.0
    [(_, hint)] = feed(stalled_engine(cfg), [plateau_x(i) for i in range(74)])
    assert hint.command == f"mario resume --init-model-path {CKPT} --jump-press"
    assert "a jump the policy controls (A released once per landing) may get" in hint.message
    parses_as_mario_resume(hint.command)
    cfg.env.jump_press = True
    [(_, hint)] = feed(stalled_engine(cfg), [plateau_x(i) for i in range(74)])
    assert hint.command == f"mario resume --init-model-path {CKPT} --restarts-share 0.5"
    assert "practice from saved states near where episodes end may get" in hint.message
    parses_as_mario_resume(hint.command)


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
    cfg.hints.cooldown = 20
    engine = HintEngine(cfg, {"updates-stalled": updates_stalled})
    k = cfg.hints.updates_stalled.iterations
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
    k = cfg.hints.updates_stalled.iterations
    assert len(stall_events(engine, 1, k, healthy(**STALLED))) == 1
    assert stall_events(engine, k + 1, 1, healthy()) == []  # cleared
    assert stall_events(engine, k + 2, k - 1, healthy(**STALLED)) == []
    assert len(stall_events(engine, 2 * k + 1, 1, healthy(**STALLED))) == 1


def test_engine_tracks_checkpoints_and_episodes_for_commands(cfg: MarioConfig) -> None:
    engine = HintEngine(cfg, {"progress-plateau": progress_plateau})
    engine.observe(CheckpointSaved(2048, "/runs/a b/step.pt", "periodic"))
    for i in range(cfg.hints.progress_plateau.episodes):
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
    hints = stall_events(engine, 2, cfg.hints.kl_too_large.iterations, high)
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
    ui = HintsConfig(kl_warn=0.05, kl_bad=0.15, entropy_warn=0.3, entropy_bad=0.1)
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
