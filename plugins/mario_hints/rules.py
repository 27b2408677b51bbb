"""The built-in hint rules: ``rule(history, cfg) -> list[Hint]``.

Each rule looks at a window of recent iterations or episodes, fires only when the
whole window shows the symptom, and suggests one ``mario resume`` line to try.
"""

from __future__ import annotations

from collections import Counter
from statistics import median
from typing import Any

from mario_cli.api import Episode, Hint, History, MarioConfig, entropy_of, retry_command
from mario_cli.api import metric_names as names

# Where agents commonly get stuck, by stage: (x position, what is there). On 1-1 a
# scripted run-and-jump Mario dies at 314 (goomba), is blocked at 434, 594, 722 and
# 898 (the four pipes) and falls at ~1128 and ~1434 (the pits).
KNOWN_OBSTACLES: dict[str, tuple[tuple[int, str], ...]] = {
    "1-1": (
        (314, "the first goomba"),
        (434, "the first pipe"),
        (594, "the tall pipe"),
        (722, "the third pipe"),
        (898, "the fourth pipe"),
        (1128, "the first pit"),
        (1434, "the second pit"),
    ),
}
RECENT_EPISODES = 100  # episodes behind the rolling rollout/* means
CLEARS_MOST = 0.5  # progress-stalled stays quiet from this rolling clear rate on


def _all(window: list[dict[str, float]], test: Any) -> bool:
    return bool(window) and all(test(metrics) for metrics in window)


def updates_stalled(history: History, cfg: MarioConfig) -> list[Hint]:
    """approx_kl ~ 0, clip_fraction = 0 and policy loss ~ 0 for ``stall_iterations``."""
    ui = cfg.ui

    def stalled(m: dict[str, float]) -> bool:
        kl = m.get(names.TRAIN_APPROX_KL)
        clip = m.get(names.TRAIN_CLIP_FRACTION)
        pg = m.get(names.TRAIN_POLICY_GRADIENT_LOSS)
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
            retry_command(history, cfg, flags),
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
            retry_command(history, cfg, [f"--ent-coef {_more(cfg.algo.ent_coef):g}"]),
        )
    ]


def kl_too_large(history: History, cfg: MarioConfig) -> list[Hint]:
    """approx_kl above ``kl_bad`` for ``kl_iterations``: updates overshoot."""
    ui = cfg.ui

    def large(m: dict[str, float]) -> bool:
        kl = m.get(names.TRAIN_APPROX_KL)
        return kl is not None and kl > ui.kl_bad

    window = history.recent(ui.kl_iterations)
    if not _all(window, large):
        return []
    algo = cfg.algo
    flags = [f"--learning-rate {algo.learning_rate / 2:g}"]
    if algo.target_kl is None or algo.target_kl > ui.kl_warn:
        flags.append(f"--target-kl {ui.kl_warn:g}")
    kl = window[-1][names.TRAIN_APPROX_KL]
    return [
        Hint(
            history.step,
            "kl-too-large",
            "warn",
            f"approx_kl is {kl:.3g} (> {ui.kl_bad:g}) for {ui.kl_iterations} iterations: "
            "each update moves the policy too far",
            retry_command(history, cfg, flags),
        )
    ]


def value_not_learning(history: History, cfg: MarioConfig) -> list[Hint]:
    """|explained_variance| near 0 for ``explained_variance_iterations``."""
    ui = cfg.ui

    def near_zero(m: dict[str, float]) -> bool:
        ev = m.get(names.TRAIN_EXPLAINED_VARIANCE)
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
            retry_command(history, cfg, flags) if flags else None,
        )
    ]


def progress_plateau(history: History, cfg: MarioConfig) -> list[Hint]:
    """Most of the last ``plateau_episodes`` episodes end at the same x, none clears."""
    ui = cfg.ui
    episodes = history.recent_episodes(ui.plateau_episodes)
    if not episodes or any(e.cleared for e in episodes):
        return []
    xs = [e.max_x_pos for e in episodes]
    x = int(median(xs))
    near = sum(abs(value - x) <= ui.plateau_tolerance for value in xs)
    if near < ui.plateau_share * len(xs):
        return []
    stage = Counter(e.stage for e in episodes).most_common(1)[0][0]
    where = f"x ~ {x} on {stage}"
    for what in _obstacles(stage, x, ui.plateau_tolerance):
        where += f" ({what})"
    env = cfg.env
    stuck = f"{near} of the last {len(xs)} episodes ended at {where}: the agent is stuck there"
    if env.reward_mode == "progress" and env.movement == "simple":
        # The reward and action advice is already taken: name the next lever instead.
        flags, what = _stall_lever(cfg)
        return [
            Hint(
                history.step,
                "progress-plateau",
                "warn",
                f"{stuck}; try {what}",
                retry_command(history, cfg, flags),
            )
        ]
    penalty = env.stall_penalty
    if penalty <= 0:
        penalty = _more(penalty)
    flags = ["--reward-mode progress", f"--stall-penalty {penalty:g}", "--movement simple"]
    if env.movement != "simple":
        flags.append("--allow-partial-init")  # another action set resizes the policy head
    return [
        Hint(
            history.step,
            "progress-plateau",
            "warn",
            f"{stuck}; reward progress, penalise standing still and allow jumping",
            retry_command(history, cfg, flags),
        )
    ]


def progress_stalled(history: History, cfg: MarioConfig) -> list[Hint]:
    """The best rolling avg_max_x_pos rose <= ``stall_progress_margin`` px in
    ``stall_progress_steps`` agent steps while the agent clears few episodes."""
    ui = cfg.ui
    window = history.max_x  # the HintEngine sizes it to ui.stall_progress_steps
    before, recent = window.best_before, window.best_recent
    if before is None or recent is None or recent - before > ui.stall_progress_margin:
        return []  # too early (no point older than the window yet) or still improving
    episodes = list(history.episodes)[-RECENT_EPISODES:]
    clear_rate = history.metrics[-1].get(names.ROLLOUT_CLEAR_RATE) if history.metrics else None
    if clear_rate is None and episodes:
        clear_rate = sum(e.cleared for e in episodes) / len(episodes)
    if clear_rate is not None and clear_rate >= CLEARS_MOST:
        return []
    message = (
        f"rollout/avg_max_x_pos has not risen more than {ui.stall_progress_margin} px in "
        f"{window.steps:,} agent steps (best {before:.0f} before, {recent:.0f} since)"
    )
    if clear_rate is not None:
        message += f", clear rate {clear_rate:.0%}"
    ends = _where_episodes_end(episodes, ui.plateau_tolerance)
    flags, lever = _stall_lever(cfg)
    if ends:
        message += f"; {ends}: {lever} may get the agent past them"
    else:
        message += f": {lever} may find a way further"
    return [
        Hint(history.step, "progress-stalled", "warn", message, retry_command(history, cfg, flags))
    ]


def _stall_lever(cfg: MarioConfig) -> tuple[list[str], str]:
    """The next lever for a stalled agent, the strongest measured one first."""
    env = cfg.env
    if not env.jump_press:
        return ["--jump-press"], "a jump the policy controls (A released once per landing)"
    if env.restart_share <= 0 and "restarts" in env.wrappers:
        return ["--restart-share 0.5"], "practice from saved states near where episodes end"
    return [f"--ent-coef {_more(cfg.algo.ent_coef):g}"], "more exploration"


def _where_episodes_end(episodes: list[Episode], tolerance: int, top: int = 3) -> str:
    """'the last 100 episodes end at x ≈ 594 on 1-1 (42%, the tall pipe), ...'.

    Greedy clusters of the non-cleared episodes' max x: the x with the most episodes
    within ±``tolerance`` px, then the next among the rest; shares are of all episodes.
    """
    stages = {e.stage for e in episodes}
    left = [(e.stage, e.max_x_pos) for e in episodes if not e.cleared]

    def near(center: tuple[str, int], end: tuple[str, int]) -> bool:
        return end[0] == center[0] and abs(end[1] - center[1]) <= tolerance

    clusters: list[tuple[str, int, int]] = []  # (stage, median x, episodes)
    while left and len(clusters) < top:
        center = max(sorted(set(left)), key=lambda c: sum(near(c, end) for end in left))
        members = [end for end in left if near(center, end)]
        if len(members) < 2:
            break  # the rest are spread out
        left = [end for end in left if not near(center, end)]
        clusters.append((center[0], int(median(x for _, x in members)), len(members)))
    if not clusters:
        return ""
    parts = []
    for stage, x, count in clusters:
        where = f"x ≈ {x}" + (f" on {stage}" if len(stages) > 1 else "")
        what = "".join(f", {name}" for name in _obstacles(stage, x, tolerance))
        parts.append(f"{where} ({count / len(episodes):.0%}{what})")
    on = f" on {next(iter(stages))}" if len(stages) == 1 else ""
    return f"the last {len(episodes)} episodes{on} end at " + ", ".join(parts)


def _obstacles(stage: str, x: int, tolerance: int) -> list[str]:
    """What KNOWN_OBSTACLES has within ±max(``tolerance``, 16) px of ``x``."""
    near = max(tolerance, 16)
    return [what for at, what in KNOWN_OBSTACLES.get(stage, ()) if abs(at - x) <= near]


def _more(value: float, floor: float = 0.01) -> float:
    """Double a coefficient, starting from ``floor`` when it is 0 or tiny."""
    return max(value * 2, floor)
