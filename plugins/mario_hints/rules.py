"""The built-in hint rules: ``rule(history, cfg) -> list[Hint]``.

Each rule looks at a window of recent iterations or episodes, fires only when the
whole window shows the symptom, and suggests one ``mario resume`` line to try. Its
thresholds are its ``[hints.<rule>]`` table (``cfg.hints.settings_of(name)``) and the
panel's shared ``[hints]`` keys.
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
    """approx_kl ~ 0, clip_fraction = 0 and policy loss ~ 0 for ``iterations``."""
    own = cfg.hints.settings_of("updates-stalled")

    def stalled(m: dict[str, float]) -> bool:
        kl = m.get(names.TRAIN_APPROX_KL)
        clip = m.get(names.TRAIN_CLIP_FRACTION)
        pg = m.get(names.TRAIN_POLICY_GRADIENT_LOSS)
        if kl is None or clip is None or pg is None:
            return False
        return abs(kl) < own.kl and clip <= 0.0 and abs(pg) < own.policy_loss

    if not _all(history.recent(own.iterations), stalled):
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
            f"loss ~ 0 for {own.iterations} iterations (advantages or learning rate ~ 0)",
            retry_command(history, cfg, flags),
        )
    ]


CLEAR_RATES = (
    names.ROLLOUT_CLEAR_RATE,
    names.ROLLOUT_GREEDY_CLEAR_RATE,
    names.BEST_CHECK_CLEAR_RATE,
)


def _clear_rate(metrics: dict[str, float]) -> float:
    """The highest clear rate training reports: sampled, greedy probes, best check."""
    return max((metrics[key] for key in CLEAR_RATES if key in metrics), default=0.0)


def entropy_collapsed(history: History, cfg: MarioConfig) -> list[Hint]:
    """Entropy below ``[hints] entropy_bad`` for ``iterations``: the policy is deterministic."""
    bad = cfg.hints.entropy_bad
    own = cfg.hints.settings_of("entropy-collapsed")

    def collapsed(m: dict[str, float]) -> bool:
        entropy = entropy_of(m)
        return entropy is not None and entropy < bad

    window = history.recent(own.iterations)
    if not _all(window, collapsed):
        return []
    # A policy that clears the stage is allowed to be near-deterministic: greedy-path
    # repair trains it to be (measured: 0.04-0.08 nats while clearing 20/20).
    if _clear_rate(window[-1]) >= own.clearing:
        return []
    entropy = entropy_of(window[-1])
    return [
        Hint(
            history.step,
            "entropy-collapsed",
            "bad",
            f"policy entropy is {entropy:.3g} nats (< {bad:g}) for "
            f"{own.iterations} iterations: the agent no longer explores",
            retry_command(history, cfg, [f"--ent-coef {_more(cfg.algo.ent_coef):g}"]),
        )
    ]


def kl_too_large(history: History, cfg: MarioConfig) -> list[Hint]:
    """approx_kl above ``[hints] kl_bad`` for ``iterations``: updates overshoot."""
    thresholds = cfg.hints
    own = thresholds.settings_of("kl-too-large")

    def large(m: dict[str, float]) -> bool:
        kl = m.get(names.TRAIN_APPROX_KL)
        return kl is not None and kl > thresholds.kl_bad

    window = history.recent(own.iterations)
    if not _all(window, large):
        return []
    algo = cfg.algo
    flags = [f"--learning-rate {algo.learning_rate / 2:g}"]
    if algo.target_kl is None or algo.target_kl > thresholds.kl_warn:
        flags.append(f"--target-kl {thresholds.kl_warn:g}")
    kl = window[-1][names.TRAIN_APPROX_KL]
    return [
        Hint(
            history.step,
            "kl-too-large",
            "warn",
            f"approx_kl is {kl:.3g} (> {thresholds.kl_bad:g}) for {own.iterations} iterations: "
            "each update moves the policy too far",
            retry_command(history, cfg, flags),
        )
    ]


def value_not_learning(history: History, cfg: MarioConfig) -> list[Hint]:
    """|explained_variance| below ``near_zero`` for ``iterations``."""
    own = cfg.hints.settings_of("value-not-learning")

    def near_zero(m: dict[str, float]) -> bool:
        ev = m.get(names.TRAIN_EXPLAINED_VARIANCE)
        return ev is not None and abs(ev) < own.near_zero

    if not _all(history.recent(own.iterations), near_zero):
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
            f"explained_variance has stayed within ±{own.near_zero:g} of 0 for "
            f"{own.iterations} iterations: the value head predicts returns "
            "no better than a constant",
            retry_command(history, cfg, flags) if flags else None,
        )
    ]


def progress_plateau(history: History, cfg: MarioConfig) -> list[Hint]:
    """Most of the last ``episodes`` episodes end at the same x, none clears."""
    own = cfg.hints.settings_of("progress-plateau")
    episodes = history.recent_episodes(own.episodes)
    if not episodes or any(e.cleared for e in episodes):
        return []
    xs = [e.max_x_pos for e in episodes]
    x = int(median(xs))
    near = sum(abs(value - x) <= own.tolerance for value in xs)
    if near < own.share * len(xs):
        return []
    stage = Counter(e.stage for e in episodes).most_common(1)[0][0]
    where = f"x ~ {x} on {stage}"
    for what in _obstacles(stage, x, own.tolerance):
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
    penalty = env.settings_of("reward").stall_penalty
    if penalty <= 0:
        penalty = _more(penalty)
    flags = ["--reward-mode progress", f"--reward-stall-penalty {penalty:g}", "--movement simple"]
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
    """The best rolling avg_max_x_pos rose <= ``margin`` px in ``steps`` agent steps while
    the agent clears few episodes."""
    own = cfg.hints.settings_of("progress-stalled")
    window = history.max_x_over(own.steps)
    before, recent = window.best_before, window.best_recent
    if before is None or recent is None or recent - before > own.margin:
        return []  # too early (no point older than the window yet) or still improving
    episodes = list(history.episodes)[-RECENT_EPISODES:]
    clear_rate = history.metrics[-1].get(names.ROLLOUT_CLEAR_RATE) if history.metrics else None
    if clear_rate is None and episodes:
        clear_rate = sum(e.cleared for e in episodes) / len(episodes)
    if clear_rate is not None and clear_rate >= CLEARS_MOST:
        return []
    message = (
        f"rollout/avg_max_x_pos has not risen more than {own.margin} px in "
        f"{window.steps:,} agent steps (best {before:.0f} before, {recent:.0f} since)"
    )
    if clear_rate is not None:
        message += f", clear rate {clear_rate:.0%}"
    # Where episodes end is grouped as the plateau rule groups them.
    ends = _where_episodes_end(episodes, cfg.hints.settings_of("progress-plateau").tolerance)
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
    if env.settings_of("restarts").share <= 0 and "restarts" in env.wrappers:
        return ["--restarts-share 0.5"], "practice from saved states near where episodes end"
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
