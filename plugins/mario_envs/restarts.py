"""Frontier restarts: start some training episodes from saved states near where episodes end.

Every episode from the stage start replays the ground the agent has already solved
before it practises the spot where it dies. ``FrontierRestarts`` keeps an archive of
emulator states this env reached (by stage and x bucket) and starts a share of the
resets from one of them, a few buckets before an x where a recent episode died or
was cut, so the agent gets a run-up to its frontier (Go-Explore's "return, then
explore"; Salimans & Chen's backward curriculum).

- Which state: a recent death (or no-progress cut) x of a stage, drawn uniformly
  from the last ``ENDS_KEPT``, so restarts go where episodes end most; then the
  highest archived bucket at least ``[env.restarts] runup_buckets`` before it (or a run-up
  drawn uniformly up to ``runup_max_buckets``), and one of that bucket's
  states at random.
- How often: ``share * (1 - clear rate)``, the clear rate being that of
  this env's last ``ANNEAL_EPISODES`` stage-start episodes of the stage. Restarts
  fade out by themselves, stage by stage, as the agent clears from the start (a
  schedule over steps could not know when a stage is solved).
- What is kept: a state is saved when Mario first enters a bucket in an episode and
  kept only if he lives ``SAFE_STEPS`` more steps (states that lead straight into
  a death are useless starts); the newest ``states_per_bucket`` per bucket,
  at most ``max_states`` in all (each ~256 KB), evicting first the buckets
  that no recent end's run-up covers. Snapshots are native objects
  that cannot be pickled: the archive lives in its env worker and is rebuilt, not
  saved, when a run resumes.

- Greedy probes: ``greedy_share`` of the stage-start resets ask (``info["greedy"]``
  at reset) that the episode be played by argmax, after eval's random 0..30 no-op
  frames. Evaluation plays greedily, and greedy play dies where sampled play rarely
  stands: the NES is deterministic, so greedy play from the start is a handful of
  fixed paths, and a sampled episode is on one of them for 100 steps with
  probability ~0.9**100. The last probe's states before its death are kept per
  stage, and ``greedy_restarts`` of the restarts start from them, so sampled play
  tries the deviations exactly where greedy play needs one. A probe that clears
  drops its stage's path.

The restore itself happens in ``MarioCore.reset`` (``options={"restore": state}``),
below every other wrapper, so they all re-initialise from the restored observation
and info: the progress reward starts from the restored x (nothing is paid for the
skipped part), the frame stack is refilled. Restart episodes carry
``info["restart"] = True`` at reset and ``"restart"`` / ``"start_x"`` in
``info["episode"]``; the trainer keeps them out of ``rollout/*``, hints and best.pt.
With ``share = 0`` the wrapper passes everything through untouched.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable
from typing import Any

import gymnasium as gym
import numpy as np

from mario_cli.api import DEFAULT_NOOP_MAX, MarioCore

SAFE_STEPS = 8  # agent steps Mario must survive after a state for it to be kept
ANNEAL_EPISODES = 20  # stage-start episodes in each stage's rolling clear rate
ENDS_KEPT = 32  # recent death / cut x per stage that restarts aim at


class FrontierArchive:
    """Saved states by stage and x bucket, bounded in count, kept where restarts aim.

    Each bucket keeps its newest ``per_bucket`` states (they follow the current
    policy; a weaker policy's states age out). The archive also keeps each stage's
    last ``ENDS_KEPT`` episode ends (the x a death or cut came at), since restarts aim
    a run-up of ``runup`` buckets (a ``(low, high)`` range) before one of them.
    Past ``max_states`` in all, a state goes from the stage holding the most, from
    the bucket fewest recent ends aim at, then the fullest, then the lowest x, the
    oldest first. Aim decides before position because the states worth keeping are
    the approach to where episodes die: a rare long episode fills many buckets past
    the frontier, and evicting "furthest behind" first would drop exactly the
    approach (measured: after 150k steps the archive held buckets 35-98, one state
    each, and restarts aimed at the first pit, bucket 35, found nothing to start
    from, so 0.46 of the episodes restarted early on and 0.07 at the end).
    Bucket 0 is never kept: a restart there would skip nothing.
    """

    def __init__(
        self, bucket_px: int, per_bucket: int, max_states: int, runup: tuple[int, int] = (3, 3)
    ) -> None:
        if bucket_px < 1 or per_bucket < 1 or max_states < 1:
            raise ValueError("bucket width, states per bucket and max states must be >= 1")
        if not 0 <= runup[0] <= runup[1]:
            raise ValueError("the run-up range must be 0 <= low <= high")
        self.bucket_px = bucket_px
        self.per_bucket = per_bucket
        self.max_states = max_states
        self.runup = runup
        self._stages: dict[Hashable, dict[int, deque[Any]]] = {}
        self._counts: dict[Hashable, int] = {}
        self._count = 0
        self._ends: dict[Hashable, deque[int]] = {}

    def __len__(self) -> int:
        return self._count

    def bucket(self, x: int) -> int:
        return int(x) // self.bucket_px

    def buckets(self, stage: Hashable) -> dict[int, int]:
        """Bucket -> number of states kept, for one stage."""
        return {b: len(s) for b, s in sorted(self._stages.get(stage, {}).items())}

    def record_end(self, stage: Hashable, x: int) -> None:
        """An episode (or life) of ``stage`` ended at ``x``: restarts aim before it."""
        self._ends.setdefault(stage, deque(maxlen=ENDS_KEPT)).append(int(x))

    def ends(self, stage: Hashable) -> list[int]:
        return list(self._ends.get(stage, ()))

    def stages_with_ends(self) -> list[Hashable]:
        return [stage for stage, ends in self._ends.items() if ends]

    def demand(self, stage: Hashable) -> Counter[int]:
        """Bucket -> how many recent ends of ``stage`` have it in their run-up range."""
        low, high = self.runup
        counts: Counter[int] = Counter()
        for x in self._ends.get(stage, ()):
            end = self.bucket(x)
            counts.update(range(max(end - high, 0), end - low + 1))
        return counts

    def add(self, stage: Hashable, x: int, state: Any) -> None:
        bucket = self.bucket(x)
        if bucket < 1:
            return
        states = self._stages.setdefault(stage, {}).setdefault(bucket, deque())
        if len(states) >= self.per_bucket:
            states.popleft()
        else:
            self._counts[stage] = self._counts.get(stage, 0) + 1
            self._count += 1
        states.append(state)
        while self._count > self.max_states:
            self._evict()

    def _evict(self) -> None:
        stage = max(self._counts, key=self._counts.__getitem__)
        buckets = self._stages[stage]
        demand = self.demand(stage)
        bucket = min(buckets, key=lambda b: (demand[b], -len(buckets[b]), b))
        buckets[bucket].popleft()
        if not buckets[bucket]:
            del buckets[bucket]
        self._counts[stage] -= 1
        self._count -= 1
        if not self._counts[stage]:
            del self._counts[stage], self._stages[stage]

    def draw_runup(self, rng: np.random.Generator) -> int:
        """Buckets between the aimed-at end and the start: fixed, or drawn from the range.

        A fixed run-up starts every restart at the same distance, which can lie past
        the step that decides a hazard (a jump timed several steps early); a range
        also covers the approach.
        """
        low, high = self.runup
        return low if low == high else int(rng.integers(low, high + 1))

    def aim(self, stage: Hashable, rng: np.random.Generator) -> Any | None:
        """A state a run-up before one of the stage's recent ends, or None."""
        ends = self._ends.get(stage)
        if not ends:
            return None
        end_x = ends[int(rng.integers(len(ends)))]
        return self.pick(stage, self.bucket(end_x) - self.draw_runup(rng), rng)

    def pick(self, stage: Hashable, max_bucket: int, rng: np.random.Generator) -> Any | None:
        """A state from the highest bucket <= ``max_bucket`` of ``stage``, or None."""
        states = highest_at_most(self._stages.get(stage, {}), max_bucket)
        return None if states is None else states[int(rng.integers(len(states)))]


def highest_at_most(by_bucket: dict[int, Any], max_bucket: int) -> Any | None:
    """The value of the highest bucket <= ``max_bucket`` (and >= 1), or None."""
    usable = [b for b in by_bucket if 1 <= b <= max_bucket]
    return by_bucket[max(usable)] if usable else None


class FrontierRestarts(gym.Wrapper):
    """Start ``share`` of the training resets from archived frontier states.

    Put it last in ``env.wrappers`` (it then sees agent steps, the reward wrapper's
    no-progress cuts, and the stacked observations it passes through unchanged).
    Needs the core Mario env underneath; on any other env it does nothing.
    """

    def __init__(self, env: gym.Env, cfg: Any) -> None:
        super().__init__(env)
        core = env.unwrapped
        self._core = core if isinstance(core, MarioCore) else None
        own = cfg.settings_of("restarts")
        self.share = float(own.share)
        self.enabled = self.share > 0 and self._core is not None
        runup = int(own.runup_buckets)
        # Archive keys are (stage label, world, stage): a whole-game env plays many stages.
        self.archive = FrontierArchive(
            own.bucket_px,
            own.states_per_bucket,
            own.max_states,
            runup=(runup, max(runup, int(own.runup_max_buckets))),
        )
        self.greedy_share = float(own.greedy_share)
        self.greedy_restarts = float(own.greedy_restarts)
        # Stage key -> (bucket of the last probe's death, bucket -> its state there).
        self.greedy_paths: dict[tuple[str, int, int], tuple[int, dict[int, Any]]] = {}
        self._probe = False
        self._probe_states: dict[int, Any] = {}
        self._rng = np.random.default_rng()
        self._clears: dict[str, deque[bool]] = {}
        self._pending: deque[tuple[int, tuple[str, int, int], int, Any]] = deque()
        self._restart = False
        self._label = ""
        self._key: tuple[str, int, int] = ("", 0, 0)
        self._run_max = 0
        self._top = 0
        self._life = 0
        self._steps = 0

    # ------------------------------------------------------------------ reset
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if not self.enabled:
            return self.env.reset(seed=seed, options=options)
        if seed is not None:
            self._rng = np.random.default_rng([seed, 0x5E57])
        options = dict(options or {})
        probe = False
        if "restore" not in options:
            saved = self._choose()
            if saved is not None:
                options["restore"] = saved
            elif self.greedy_share > 0 and self._rng.random() < self.greedy_share:
                probe = True
                # eval's start protocol, so probes see the starts eval will
                noop = int(self._rng.integers(0, DEFAULT_NOOP_MAX + 1))
                options.setdefault("noop_frames", noop)
        obs, info = self.env.reset(seed=seed, options=options or None)
        self._restart = bool(info.get("restart", False))
        self._probe = probe
        if probe:
            info["greedy"] = True
        self._label = info["stage_name"]
        self._begin_run(info)
        return obs, info

    def restart_probability(self, label: str) -> float:
        """``share`` scaled by the share of stage-start episodes not cleared."""
        clears = self._clears.get(label)
        rate = float(np.mean(clears)) if clears else 0.0
        return self.share * (1.0 - rate)

    def _choose(self) -> Any | None:
        specs = self._core.specs
        label = specs[int(self._rng.integers(len(specs)))].label
        if self._rng.random() >= self.restart_probability(label):
            return None
        paths = [key for key in self.greedy_paths if key[0] == label]
        if paths and self._rng.random() < self.greedy_restarts:
            saved = self._on_greedy_path(paths[int(self._rng.integers(len(paths)))])
            if saved is not None:
                return saved
        keys = [key for key in self.archive.stages_with_ends() if key[0] == label]
        if not keys:
            return None
        return self.archive.aim(keys[int(self._rng.integers(len(keys)))], self._rng)

    def _on_greedy_path(self, key: tuple[str, int, int]) -> Any | None:
        """A state of the last probe of ``key``, a drawn run-up before where it died."""
        end, states = self.greedy_paths[key]
        return highest_at_most(states, end - self.archive.draw_runup(self._rng))

    def _begin_run(self, info: dict[str, Any]) -> None:
        """A new stretch of play: an episode, a stage of the whole game, or a new life."""
        self._key = (self._label, int(info["world"]), int(info["stage"]))
        self._run_max = int(info["x_pos"])
        self._top = self.archive.bucket(self._run_max)
        self._life = int(info["life"])
        self._pending.clear()
        self._probe_states = {}
        self._steps = 0

    # ------------------------------------------------------------------- step
    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if not self.enabled:
            return obs, reward, terminated, truncated, info
        key = (self._label, int(info["world"]), int(info["stage"]))
        if key != self._key:  # the whole game moved on to the next stage
            self._commit(self._steps)
            if self._probe:
                self._end_probe(failed=False)
            self._begin_run(info)
        self._steps += 1
        x = int(info["x_pos"])
        self._run_max = max(self._run_max, x)
        died = (terminated and not info["flag_get"]) or int(info["life"]) < self._life
        if died or truncated:
            self.archive.record_end(self._key, self._run_max)
        if self._probe and (died or truncated or terminated):
            self._end_probe(died or truncated)
        if terminated or truncated:
            if not died:  # the flag or a cut: what came before did not kill Mario
                self._commit(self._steps)
            if not self._restart:
                clears = self._clears.setdefault(self._label, deque(maxlen=ANNEAL_EPISODES))
                clears.append(bool(info["flag_get"]))
            self._pending.clear()
        elif died:  # a life lost in the whole game: the next life starts over
            self._begin_run(info)
        else:
            bucket = self.archive.bucket(x)
            if bucket > self._top:
                self._top = bucket
                state = self._core.dump_state()
                self._pending.append((self._steps, self._key, x, state))
                if self._probe:
                    self._keep_probe_state(bucket, state)
            self._commit(self._steps - SAFE_STEPS)
        return obs, reward, terminated, truncated, info

    def _keep_probe_state(self, bucket: int, state: Any) -> None:
        """Keep a probe's state; only the longest run-up's worth behind its front."""
        self._probe_states[bucket] = state
        oldest = bucket - self.archive.runup[1]
        for old in [b for b in self._probe_states if b < oldest]:
            del self._probe_states[old]

    def _end_probe(self, failed: bool) -> None:
        """A greedy probe's run ended: keep its path to a failure, forget it at a clear."""
        if failed:
            self.greedy_paths[self._key] = (self._top, self._probe_states)
        else:
            self.greedy_paths.pop(self._key, None)
        self._probe_states = {}

    def _commit(self, up_to_step: int) -> None:
        """Archive the pending states saved at or before ``up_to_step``."""
        while self._pending and self._pending[0][0] <= up_to_step:
            _, key, x, state = self._pending.popleft()
            self.archive.add(key, x, state)
