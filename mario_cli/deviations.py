"""Where a greedy path could have been saved: one- to few-step deviations before its end.

Greedy play from the stage start is a fixed path (the NES is deterministic), so when
it dies, the question a user (or a training aid) asks is which different decision,
and where, would have got past. :func:`greedy_path` plays the path and keeps the
emulator state and the stacked observation before every step;
:func:`saving_deviations` then tries, at each of the last ``window`` steps, each other
action held for ``length`` steps followed by greedy play again, and reports those
that get ``margin`` px past the path's furthest x (or clear the stage).

A trial starts ``REPLAY_STEPS`` steps before its deviation from a saved state and
replays the path's own actions up to it, so the frame stack holds real frames again
(a restore refills it with one frame). The jump-press memory is not part of a saved
state, so the replay is checked against the path's observation at the deviation step;
where they differ, the trial replays from the stage start instead, which is exact
because nothing in the NES is random.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mario_cli.envs.core import MarioCore, SavedState

REPLAY_STEPS = 4  # >= the frame stack: after this many replayed steps it holds real frames
STALL_STEPS = 150  # a greedy path this long without a new max x is stuck, not dying
STALL_TAIL = 8  # a stuck path is searched up to this many steps after its max x

Chooser = Callable[[np.ndarray], int]  # observation -> action (e.g. the policy's argmax)


@dataclass
class GreedyPath:
    """One episode played by ``choose``: per step, the state and observation before it."""

    noop_frames: int
    actions: list[int] = field(default_factory=list)
    xs: list[int] = field(default_factory=list)  # x after each step
    states: list[SavedState | None] = field(default_factory=list)  # None: not kept
    observations: list[np.ndarray] = field(default_factory=list)
    max_x: int = 0
    cleared: bool = False
    died: bool = False  # ended by a lost life (not the flag, a time-out or a stall)

    def stall_point(self, tail: int) -> GreedyPath:
        """The path up to ``tail`` steps after it first reached its max x: where a path
        that stalled (walking into a wall, say) stopped getting anywhere."""
        end = min(len(self.actions), self.xs.index(self.max_x) + 1 + tail)
        return GreedyPath(
            self.noop_frames,
            self.actions[:end],
            self.xs[:end],
            self.states[:end],
            self.observations[:end],
            self.max_x,
        )


@dataclass(frozen=True)
class Deviation:
    """``action`` held for ``length`` steps from step ``step`` (at x ``x``), then greedy."""

    step: int
    x: int
    action: int
    length: int
    max_x: int
    cleared: bool
    exact_restore: bool  # False: the restore did not reproduce the path; replayed from the start


def _core(env: Any) -> MarioCore:
    core = env.unwrapped
    if not isinstance(core, MarioCore):
        raise TypeError("deviations need the core Mario env underneath")
    return core


def _ended(terminated: bool, truncated: bool, info: dict[str, Any], life: int) -> bool:
    return terminated or truncated or int(info["life"]) < life


def greedy_path(
    env: Any,
    choose: Chooser,
    noop_frames: int = 0,
    max_steps: int = 3000,
    keep_states: int | None = None,
    stall_steps: int | None = None,
) -> GreedyPath:
    """Play one episode with ``choose`` from the stage start after ``noop_frames`` frames.

    The episode ends at a lost life, as a stage-start episode does for the agent, or
    after ``stall_steps`` steps without a new max x. ``keep_states`` keeps only the
    last that many saved states (~256 KB each; older ones become None).
    """
    core = _core(env)
    path = GreedyPath(noop_frames=noop_frames)
    obs, info = env.reset(options={"noop_frames": noop_frames})
    life = int(info["life"])
    since_best = 0
    for _ in range(max_steps):
        path.states.append(core.dump_state())
        if keep_states is not None and len(path.states) > keep_states:
            path.states[-keep_states - 1] = None
        path.observations.append(np.array(obs, copy=True))
        action = choose(obs)
        obs, _, terminated, truncated, info = env.step(action)
        path.actions.append(action)
        x = int(info["x_pos"])
        path.xs.append(x)
        since_best = 0 if x > path.max_x else since_best + 1
        path.max_x = max(path.max_x, x)
        if info.get("flag_get"):
            path.cleared = True
            break
        if _ended(terminated, truncated, info, life):
            path.died = int(info["life"]) < life or terminated
            break
        if stall_steps is not None and since_best >= stall_steps:
            break
    return path


def path_to_search(
    env: Any, choose: Chooser, noop_frames: int, window: int, max_steps: int = 3000
) -> tuple[GreedyPath, GreedyPath]:
    """Greedy play until the flag, a death or a stall (``STALL_STEPS`` without a new max
    x), keeping the states a search of ``window`` steps needs; and the part to search:
    the whole path if it died, else up to ``STALL_TAIL`` steps past where it stopped
    gaining, so the search covers the approach to what stopped it."""
    path = greedy_path(
        env,
        choose,
        noop_frames,
        max_steps,
        keep_states=STALL_STEPS + window + REPLAY_STEPS + 1,
        stall_steps=STALL_STEPS,
    )
    return path, path if path.died else path.stall_point(STALL_TAIL)


@dataclass
class Trial:
    """How one deviation played out; ``observations``/``actions`` only when recorded."""

    max_x: int
    cleared: bool
    observations: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)


def _play_on(
    env: Any,
    obs: np.ndarray,
    choose: Chooser,
    first: Sequence[int],
    horizon: int,
    life: int,
    stop_at: int | None = None,
    record: bool = False,
) -> Trial:
    """Play ``first`` then ``choose`` for up to ``horizon`` steps, or until x reaches
    ``stop_at``; with ``record``, keep the observation before each step and its action."""
    trial = Trial(0, False)
    for t in range(len(first) + horizon):
        action = first[t] if t < len(first) else choose(obs)
        if record:
            trial.observations.append(np.array(obs, copy=True))
            trial.actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        trial.max_x = max(trial.max_x, int(info["x_pos"]))
        if info.get("flag_get"):
            trial.cleared = True
            break
        if _ended(terminated, truncated, info, life):
            break
        if stop_at is not None and trial.max_x >= stop_at:
            break
    return trial


def _start_at(env: Any, path: GreedyPath, step: int) -> tuple[np.ndarray, int, bool]:
    """The observation before ``step`` of ``path``, the life count, and whether it came
    from a saved state (else from a replay of the whole path so far)."""
    begin = max(0, step - REPLAY_STEPS)
    if begin > 0 and path.states[begin] is not None:
        obs, info = env.reset(options={"restore": path.states[begin]})
        life = int(info["life"])
        for action in path.actions[begin:step]:
            obs, *_ = env.step(action)
        if np.array_equal(obs, path.observations[step]):
            return obs, life, True
    obs, info = env.reset(options={"noop_frames": path.noop_frames})
    life = int(info["life"])
    for action in path.actions[:step]:
        obs, *_ = env.step(action)
    return obs, life, begin == 0


def saving_deviations(
    env: Any,
    choose: Chooser,
    path: GreedyPath,
    window: int = 28,
    lengths: Sequence[int] = (1,),
    margin: int = 64,
    horizon: int = 80,
    actions: Sequence[int] | None = None,
) -> list[Deviation]:
    """Deviations in the last ``window`` steps of ``path`` that get past its end.

    Each holds an action other than the path's own for ``length`` steps, then lets
    ``choose`` play for up to ``horizon`` steps; it saves the path when it reaches
    ``path.max_x + margin`` or the flag. ``actions`` defaults to the whole action set.
    """
    candidates = list(range(env.action_space.n)) if actions is None else list(actions)
    saved: list[Deviation] = []
    target = path.max_x + margin
    for step in range(max(0, len(path.actions) - window), len(path.actions)):
        for action in candidates:
            if action == path.actions[step]:
                continue
            for length in lengths:
                obs, life, exact = _start_at(env, path, step)
                trial = _play_on(env, obs, choose, [action] * length, horizon, life)
                if trial.cleared or trial.max_x >= target:
                    saved.append(_deviation(path, step, action, length, trial, exact))
    return saved


def _deviation(
    path: GreedyPath, step: int, action: int, length: int, trial: Trial, exact: bool
) -> Deviation:
    """``action`` held ``length`` steps from ``step`` of ``path``, as ``trial`` played it."""
    x = path.xs[step - 1] if step > 0 else 0
    return Deviation(step, x, action, length, trial.max_x, trial.cleared, exact)


@dataclass
class Repair:
    """The latest step of a dying path whose change gets past its end, and the path
    repaired: the path's own steps before it, the change (one action held for
    ``deviation.length`` steps), then ``choose``'s steps until ``margin`` px past the
    old end (or the flag)."""

    deviation: Deviation
    observations: list[np.ndarray]
    actions: list[int]

    @property
    def fix_indices(self) -> list[int]:
        """Where the change sits in ``actions``."""
        return list(range(self.deviation.step, self.deviation.step + self.deviation.length))


@dataclass
class RepairSearch:
    """What :func:`first_repair` found and what it cost."""

    repair: Repair | None
    trials: int
    env_steps: int
    out_of_budget: bool  # stopped at ``max_env_steps`` before the window was searched


def first_repair(
    env: Any,
    choose: Chooser,
    path: GreedyPath,
    window: int,
    actions: Sequence[int],
    margin: int = 64,
    horizon: int = 80,
    max_env_steps: int | None = None,
    lengths: Sequence[int] = (1,),
    more_envs: Sequence[Any] = (),
) -> RepairSearch:
    """Search the last ``window`` steps of ``path`` from its end backwards for a
    change, one of ``actions`` held for ``length`` steps, that gets ``margin`` px past
    the end; each length in ``lengths`` is searched only if the ones before found none.

    The latest such step wins (the smallest change to what the policy does); at that
    step, a clear beats the furthest x. The search stops once its trials have stepped
    the env ``max_env_steps`` times (a trial whose restore does not reproduce the path
    replays it from the stage start, which can cost thousands of steps).

    ``more_envs`` (envs of the same stage) play a step's trials in threads, one env
    each (nes-py releases the GIL while it emulates); the result is the same.
    """
    target = path.max_x + margin
    trials = used = 0
    envs = [env, *more_envs]
    pool = ThreadPoolExecutor(len(envs)) if len(envs) > 1 else None
    try:
        for length in lengths:
            for step in range(len(path.actions) - 1, max(0, len(path.actions) - window) - 1, -1):
                firsts = [
                    (action, [action] * length)
                    for action in actions
                    if [action] * length != path.actions[step : step + length]  # not its own
                ]
                if firsts and max_env_steps is not None and used >= max_env_steps:
                    return RepairSearch(None, trials, used, True)
                played = _play_trials(envs, pool, path, step, firsts, choose, horizon, target)
                best: tuple[Trial, int, bool] | None = None
                for (action, _), (trial, exact) in zip(firsts, played, strict=True):
                    if max_env_steps is not None and used >= max_env_steps:
                        return RepairSearch(None, trials, used, True)
                    trials += 1
                    used += min(step, REPLAY_STEPS) + (0 if exact else step) + len(trial.actions)
                    if len(trial.actions) < length or not (trial.cleared or trial.max_x >= target):
                        continue
                    if best is None or (trial.cleared, trial.max_x) > (
                        best[0].cleared,
                        best[0].max_x,
                    ):
                        best = (trial, action, exact)
                if best is not None:
                    trial, action, exact = best
                    repair = Repair(
                        _deviation(path, step, action, length, trial, exact),
                        path.observations[:step] + trial.observations,
                        path.actions[:step] + trial.actions,
                    )
                    return RepairSearch(repair, trials, used, False)
    finally:
        if pool is not None:
            pool.shutdown()
    return RepairSearch(None, trials, used, False)


def _play_trials(
    envs: list[Any],
    pool: ThreadPoolExecutor | None,
    path: GreedyPath,
    step: int,
    firsts: list[tuple[int, list[int]]],
    choose: Chooser,
    horizon: int,
    target: int,
) -> list[tuple[Trial, bool]]:
    """Each change in ``firsts`` tried at ``step``: (trial, exact restore), in order;
    env ``i`` plays changes ``i``, ``i + len(envs)``, ... one after another."""

    def play_share(index: int) -> list[tuple[int, tuple[Trial, bool]]]:
        env, done = envs[index], []
        for k in range(index, len(firsts), len(envs)):
            obs, life, exact = _start_at(env, path, step)
            trial = _play_on(env, obs, choose, firsts[k][1], horizon, life, target, record=True)
            done.append((k, (trial, exact)))
        return done

    shares = range(min(len(envs), len(firsts)))
    results = pool.map(play_share, shares) if pool is not None else map(play_share, shares)
    by_change = sorted((pair for share in results for pair in share), key=lambda pair: pair[0])
    return [played for _, played in by_change]


def replay_from_start(env: Any, noop_frames: int, actions: Sequence[int]) -> Trial:
    """Play ``actions`` from the stage start after ``noop_frames``, recording each
    observation: the exact game (a restored state lacks the jump-press memory)."""
    obs, info = env.reset(options={"noop_frames": noop_frames})
    return _play_on(env, obs, lambda _: 0, list(actions), 0, int(info["life"]), record=True)


def explain_greedy_death(
    checkpoint: Any,
    env_overrides: dict[str, Any] | None = None,
    noop_frames: int = 0,
    window: int = 28,
) -> dict[str, Any]:
    """Play a checkpoint greedily once and list the one-step deviations that save it.

    A JSON-able summary: where the path ended and, for each saving deviation, its
    step, x, action name and how far it got.
    """
    from mario_cli.envs import make_env
    from mario_cli.envs.stages import action_names
    from mario_cli.errors import ConfigError
    from mario_cli.evaluation import load_agent

    agent = load_agent(checkpoint, env_overrides)
    if agent.policy.recurrent:
        raise ConfigError("--deviations needs a feed-forward policy (this one is recurrent)")
    names = action_names(agent.cfg.env.movement)
    env = make_env(agent.cfg.env)
    try:
        choose: Chooser = lambda obs: agent.act(obs, None, False, True)[0]  # noqa: E731
        # A stuck path (eval plays on to the timer) is searched where it stopped gaining.
        path, searched = path_to_search(env, choose, noop_frames, window)
        found = [] if path.cleared else saving_deviations(env, choose, searched, window=window)
    finally:
        env.close()
    return {
        "noop_frames": noop_frames,
        "window": window,
        "steps": len(path.actions),
        "max_x_pos": path.max_x,
        "cleared": path.cleared,
        # no new max x for STALL_STEPS steps: eval would play on to the timer from here
        "stuck": not path.cleared and not path.died,
        "searched_to": len(searched.actions),  # the window is the steps before this one
        "saving": [
            {
                "step": d.step,
                "x_pos": d.x,
                "action": names[d.action],
                "max_x_pos": d.max_x,
                "cleared": d.cleared,
            }
            for d in found
        ],
    }
