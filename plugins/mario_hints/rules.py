"""The built-in hint rules: ``rule(history, cfg) -> list[Hint]``.

Each rule looks at a window of recent iterations or episodes, fires only when the
whole window shows the symptom, and suggests one ``mario resume`` line to try.
"""

from __future__ import annotations

from collections import Counter
from statistics import median
from typing import Any

from mario_cli.config import MarioConfig
from mario_cli.diagnostics import History, entropy_of, resume_command
from mario_cli.events import Hint

# Where agents commonly get stuck, by stage: (x position, what is there).
KNOWN_OBSTACLES: dict[str, tuple[tuple[int, str], ...]] = {
    "1-1": ((314, "the first goomba"), (594, "the tall pipe")),
}


def _all(window: list[dict[str, float]], test: Any) -> bool:
    return bool(window) and all(test(metrics) for metrics in window)


def updates_stalled(history: History, cfg: MarioConfig) -> list[Hint]:
    """approx_kl ~ 0, clip_fraction = 0 and policy loss ~ 0 for ``stall_iterations``."""
    ui = cfg.ui

    def stalled(m: dict[str, float]) -> bool:
        kl = m.get("train/approx_kl")
        clip = m.get("train/clip_fraction")
        pg = m.get("train/policy_gradient_loss")
        if kl is None or clip is None or pg is None:
            return False
        return abs(kl) < ui.stall_kl and clip <= 0.0 and abs(pg) < ui.stall_policy_loss

    if not _all(history.recent(ui.stall_iterations), stalled):
        return []
    algo = cfg.algo
    flags = [f"--learning-rate {algo.learning_rate * 2:g}", f"--ent-coef {_more(algo.ent_coef):g}"]
    if not algo.normalize_advantage:
        flags.append("--normalize-advantage")
    return [
        Hint(
            history.step,
            "updates-stalled",
            "bad",
            f"the policy has stopped changing: approx_kl ~ 0, clip_fraction = 0 and policy "
            f"loss ~ 0 for {ui.stall_iterations} iterations (advantages or learning rate ~ 0)",
            resume_command(history, cfg, flags),
        )
    ]


def entropy_collapsed(history: History, cfg: MarioConfig) -> list[Hint]:
    """Entropy below ``entropy_bad`` for ``entropy_iterations``: the policy is deterministic."""
    ui = cfg.ui

    def collapsed(m: dict[str, float]) -> bool:
        entropy = entropy_of(m)
        return entropy is not None and entropy < ui.entropy_bad

    window = history.recent(ui.entropy_iterations)
    if not _all(window, collapsed):
        return []
    entropy = entropy_of(window[-1])
    return [
        Hint(
            history.step,
            "entropy-collapsed",
            "bad",
            f"policy entropy is {entropy:.3g} nats (< {ui.entropy_bad:g}) for "
            f"{ui.entropy_iterations} iterations: the agent no longer explores",
            resume_command(history, cfg, [f"--ent-coef {_more(cfg.algo.ent_coef):g}"]),
        )
    ]


def kl_too_large(history: History, cfg: MarioConfig) -> list[Hint]:
    """approx_kl above ``kl_bad`` for ``kl_iterations``: updates overshoot."""
    ui = cfg.ui

    def large(m: dict[str, float]) -> bool:
        kl = m.get("train/approx_kl")
        return kl is not None and kl > ui.kl_bad

    window = history.recent(ui.kl_iterations)
    if not _all(window, large):
        return []
    algo = cfg.algo
    flags = [f"--learning-rate {algo.learning_rate / 2:g}"]
    if algo.target_kl is None or algo.target_kl > ui.kl_warn:
        flags.append(f"--target-kl {ui.kl_warn:g}")
    kl = window[-1]["train/approx_kl"]
    return [
        Hint(
            history.step,
            "kl-too-large",
            "warn",
            f"approx_kl is {kl:.3g} (> {ui.kl_bad:g}) for {ui.kl_iterations} iterations: "
            "each update moves the policy too far",
            resume_command(history, cfg, flags),
        )
    ]


def value_not_learning(history: History, cfg: MarioConfig) -> list[Hint]:
    """|explained_variance| near 0 for ``explained_variance_iterations``."""
    ui = cfg.ui

    def near_zero(m: dict[str, float]) -> bool:
        ev = m.get("train/explained_variance")
        return ev is not None and abs(ev) < ui.explained_variance_zero

    if not _all(history.recent(ui.explained_variance_iterations), near_zero):
        return []
    algo = cfg.algo
    flags = []
    if algo.vf_coef < 1.0:
        flags.append(f"--vf-coef {min(algo.vf_coef * 2, 1.0):g}")
    if algo.gae_lambda > 0.95:
        flags.append("--gae-lambda 0.95")
    return [
        Hint(
            history.step,
            "value-not-learning",
            "warn",
            f"explained_variance has stayed within ±{ui.explained_variance_zero:g} of 0 for "
            f"{ui.explained_variance_iterations} iterations: the value head predicts returns "
            "no better than a constant",
            resume_command(history, cfg, flags) if flags else None,
        )
    ]


def progress_plateau(history: History, cfg: MarioConfig) -> list[Hint]:
    """Most of the last ``plateau_episodes`` episodes end at the same x, none clears."""
    ui = cfg.ui
    episodes = history.recent_episodes(ui.plateau_episodes)
    if not episodes or any(e.get("cleared") for e in episodes):
        return []
    xs = [int(e["max_x_pos"]) for e in episodes]
    x = int(median(xs))
    near = sum(abs(value - x) <= ui.plateau_tolerance for value in xs)
    if near < ui.plateau_share * len(xs):
        return []
    stage = Counter(str(e.get("stage", "?")) for e in episodes).most_common(1)[0][0]
    where = f"x ~ {x} on {stage}"
    for obstacle_x, what in KNOWN_OBSTACLES.get(stage, ()):
        if abs(obstacle_x - x) <= max(ui.plateau_tolerance, 16):
            where += f" ({what})"
    env = cfg.env
    penalty = env.stall_penalty
    if env.reward_mode == "progress" or penalty <= 0:
        penalty = _more(penalty)
    flags = ["--reward-mode progress", f"--stall-penalty {penalty:g}", "--movement simple"]
    if env.movement != "simple":
        flags.append("--allow-partial-init")  # another action set resizes the policy head
    return [
        Hint(
            history.step,
            "progress-plateau",
            "warn",
            f"{near} of the last {len(xs)} episodes ended at {where}: the agent is stuck "
            "there; reward progress, penalise standing still and allow jumping",
            resume_command(history, cfg, flags),
        )
    ]


def _more(value: float, floor: float = 0.01) -> float:
    """Double a coefficient, starting from ``floor`` when it is 0 or tiny."""
    return max(value * 2, floor)
