"""Rollout collection: step the vector env with a policy and fill rollout storage.

``Collector`` runs in the trainer's thread (collect, then learn). ``BackgroundCollector``
runs it in an actor thread with its own copy of the policy, so collecting the next
rollout overlaps with learning on the last one; the actor acts with the weights it
last received, which is a real policy lag that V-trace (IMPALA) or PPO's ratio
corrects. Env stepping happens in worker processes and torch releases the GIL, so a
thread is enough to overlap the two.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mario_cli.envs import VectorEnv
from mario_cli.training.rollout import RolloutBatch, RolloutStorage

Autocast = Callable[[], contextlib.AbstractContextManager[Any]]
Timer = Callable[[str], contextlib.AbstractContextManager[Any]]


def _no_timer(_phase: str) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


class Collector:
    """Keeps the envs' current observations (and recurrent state) between rollouts."""

    def __init__(
        self,
        venv: VectorEnv,
        n_steps: int,
        gamma: float,
        device: torch.device,
        autocast: Autocast = contextlib.nullcontext,
        timer: Timer = _no_timer,
    ) -> None:
        self.venv = venv
        self.n_steps = n_steps
        self.gamma = gamma
        self.device = device
        self.autocast = autocast
        self.timer = timer
        self.obs: torch.Tensor | None = None
        self.starts: torch.Tensor | None = None
        self.state: Any = None
        # Envs whose current episode is a greedy probe (the env asked at its reset).
        self.greedy = torch.zeros(venv.num_envs, dtype=torch.bool, device=device)
        self.steps_collected = 0

    def reset(self, seed: int | None, policy: torch.nn.Module, steps_done: int) -> None:
        obs, infos = self.venv.reset(seed=seed)
        self.obs = torch.from_numpy(obs).to(self.device)
        self.starts = torch.ones(self.venv.num_envs, device=self.device)
        self.greedy[:] = torch.tensor([bool(info.get("greedy")) for info in infos])
        initial = getattr(policy, "initial_state", None)
        self.state = initial(self.venv.num_envs, self.device) if initial else None
        self.steps_collected = steps_done

    def collect(
        self,
        policy: torch.nn.Module,
        storage: RolloutStorage,
        should_stop: Callable[[], bool],
        lock: contextlib.AbstractContextManager[Any] | None = None,
    ) -> RolloutBatch | None:
        """``n_steps`` of every env; None if ``should_stop()`` turned true first.

        The envs step in the vector env's groups, in turn: each group's next actions
        are chosen while the workers step the other groups (``step_async``), so the
        policy's inference overlaps with emulation. Every action still comes from the
        current weights: no policy lag. A recurrent policy steps all envs as one group
        (cores can select a sub-batch's state, not write one back).

        The policy runs under ``no_grad``, not ``inference_mode``: a caller whose weights
        stay fixed through the rollout can hold one autocast region around the whole
        call, and autocast then casts each weight once per rollout instead of once per
        call (it caches only outside inference mode). The actions are the same.

        An env whose episode is a greedy probe (its reset info said ``"greedy"``) acts
        by argmax until the episode ends. Those steps train like the others: argmax is
        the policy's most likely action, so treating it as sampled biases the update
        only where the policy is unsure, and its advantages say where greedy play
        fails.
        """
        lock = lock or contextlib.nullcontext()
        n_envs = self.venv.num_envs
        episodes: list[tuple[int, int, dict[str, Any]]] = []
        obs, starts, state = self.obs.clone(), self.starts.clone(), self.state
        # Made outside inference mode: the learner back-propagates through it.
        initial_state = _normal_copy(state)
        reset_noise = getattr(policy, "reset_noise", None)
        if reset_noise is not None:
            with lock:
                reset_noise()
        spans = self.venv.groups if state is None else [(0, n_envs)]
        acted: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}

        def act(span: tuple[int, int]) -> None:
            nonlocal state
            low, high = span
            greedy = self.greedy[low:high]
            probing = {"deterministic": greedy} if bool(greedy.any()) else {}
            with self.timer("inference"), lock, torch.no_grad(), self.autocast():
                actions, log_probs, values, state = policy.act(
                    obs[low:high], state, starts[low:high], **probing
                )
                actions_np = actions.cpu().numpy()
            with self.timer("env_wait"):
                self.venv.step_async(span, actions_np)
            acted[span] = (actions, log_probs, values.float())

        storage.step = 0
        for span in spans:
            act(span)
        for t in range(self.n_steps):
            if should_stop():
                for span in acted:  # collect what is in flight: the pipes stay in step
                    self.venv.step_wait(span)
                storage.step = 0
                return None
            step = self.steps_collected + (t + 1) * n_envs
            for span in spans:
                low, high = span
                with self.timer("env_wait"):
                    next_obs, rewards, terminated, truncated, infos = self.venv.step_wait(span)
                with self.timer("storing"):  # results into the rollout, episode ends
                    rewards_t = torch.from_numpy(rewards).to(self.device)
                    cut = np.flatnonzero(truncated & ~terminated)
                    if cut.size:
                        # A truncated episode did not end in the game: bootstrap its last value.
                        final = torch.from_numpy(np.stack([infos[i]["final_obs"] for i in cut]))
                        with lock, torch.no_grad(), self.autocast():
                            final_state = policy.select_state(state, cut)
                            done = torch.zeros(len(cut), device=self.device)
                            value = policy(final.to(self.device), final_state, done).value.float()
                        rewards_t[torch.from_numpy(cut).to(self.device)] += self.gamma * value
                    dones = torch.from_numpy(terminated | truncated).to(self.device, torch.float32)
                    actions, log_probs, values = acted.pop(span)
                    storage.put(
                        t, slice(low, high), obs[low:high], actions, log_probs, values,
                        rewards_t, dones, starts[low:high],
                    )  # fmt: skip
                    episodes += [
                        (step, low + i, info["episode"])
                        for i, info in enumerate(infos)
                        if "episode" in info
                    ]
                    for i in np.flatnonzero(terminated | truncated):
                        self.greedy[low + i] = bool(infos[i].get("next_greedy"))
                    obs[low:high] = torch.from_numpy(next_obs).to(self.device)
                    starts[low:high] = dones
                if t + 1 < self.n_steps:
                    act(span)
        storage.step = self.n_steps
        with self.timer("inference"), lock, torch.no_grad(), self.autocast():
            last_value = policy(obs, state, starts).value.float()
        self.obs, self.starts, self.state = obs, starts, state
        self.steps_collected += self.n_steps * n_envs
        with self.timer("storing"):
            batch = storage.batch(last_value, obs.clone(), initial_state)
        batch.episodes = episodes
        return batch


class BackgroundCollector:
    """Collects in an actor thread while the learner updates; hands rollouts over a queue.

    Three storages rotate: one being filled, one waiting in the queue, one being
    learned from, so no rollout is overwritten while in use.
    """

    def __init__(
        self,
        collector: Collector,
        learner: torch.nn.Module,
        storages: list[RolloutStorage],
        should_stop: Callable[[], bool],
    ) -> None:
        self.collector = collector
        self.actor = copy.deepcopy(learner)  # train mode: noisy heads explore
        self.storages = storages
        self.should_stop = should_stop
        self.version = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue[RolloutBatch] = queue.Queue(maxsize=1)
        self._halt = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mario-actor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def publish(self, learner: torch.nn.Module, version: int) -> None:
        """Give the actor the learner's current weights."""
        weights = {k: v.detach().clone() for k, v in learner.state_dict().items()}
        with self._lock:
            self.actor.load_state_dict(weights)
            self.version = version

    def _stopping(self) -> bool:
        return self._halt.is_set() or self.should_stop()

    def _run(self) -> None:
        try:
            for i in _forever():
                storage = self.storages[i % len(self.storages)]
                version = self.version
                batch = self.collector.collect(self.actor, storage, self._stopping, self._lock)
                if batch is None:
                    return
                batch.policy_version = version
                while not self._stopping():
                    try:
                        self._queue.put(batch, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the learner thread, which raises it
            self._error = exc

    def next_batch(self) -> RolloutBatch | None:
        """The next rollout; None once a stop was requested."""
        while True:
            if self._error is not None:
                raise self._error
            try:
                return self._queue.get(timeout=0.2)
            except queue.Empty:
                if not self._thread.is_alive():
                    if self._error is not None:
                        raise self._error from None
                    return None

    def stop(self) -> None:
        self._halt.set()
        with contextlib.suppress(queue.Empty):
            self._queue.get_nowait()
        self._thread.join(timeout=60)


def _normal_copy(state: Any) -> Any:
    """A recurrent state (tensor or tuple of tensors) as ordinary tensors."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.clone()
    return type(state)(_normal_copy(s) for s in state)


def _forever():
    i = 0
    while True:
        yield i
        i += 1
