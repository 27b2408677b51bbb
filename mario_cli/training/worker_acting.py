"""Collection where each env worker acts on its own envs with a copy of the policy.

Why: on a CPU the trainer acting for worker processes costs a core share and a round
trip per group step, and a worker that finishes its share of a group before the other
worker has no command until both have answered and the policy has acted. Measured on
2 vCPUs (collection only, 3 alternating rounds of 8,192 steps): the trainer acting
437-468 steps/s with the cores 92-93% busy, the workers acting 513-533 at 99%.

The trainer publishes its weights (parameters and buffers, so NoisyLinear's noise too)
to shared memory before each rollout; every worker loads them, plays ``n_steps`` with
its envs and writes its rows of the rollout into a shared rollout, which the trainer
copies into its storage. Same rollout, same weights, no policy lag: the actions are
sampled from the same distribution, by each worker's own seeded generator.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import torch

from mario_cli.training.rollout import RolloutBatch, RolloutStorage

_ALIGN = 64  # bytes: each array starts on its own cache line

ArraySpec = list[tuple[str, tuple[int, ...], str]]  # (name, shape, numpy dtype name)


class SharedArrays:
    """Named numpy arrays laid out in one shared-memory block, by creator or attacher."""

    def __init__(self, spec: ArraySpec, name: str | None = None) -> None:
        self.spec = spec
        offsets, size = [], 0
        for _, shape, dtype in spec:
            offsets.append(size)
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            size += -(-nbytes // _ALIGN) * _ALIGN
        self.owner = name is None
        self.shm = SharedMemory(create=True, size=max(size, 1)) if name is None else None
        if self.shm is None:
            self.shm = SharedMemory(name=name)
        self.arrays = {
            key: np.ndarray(shape, dtype=dtype, buffer=self.shm.buf, offset=offset)
            for (key, shape, dtype), offset in zip(spec, offsets, strict=True)
        }

    @property
    def name(self) -> str:
        return self.shm.name

    def close(self) -> None:
        if self.shm is None:
            return
        self.arrays = {}
        self.shm.close()
        if self.owner:
            self.shm.unlink()
        self.shm = None


def weights_spec(policy: torch.nn.Module) -> ArraySpec:
    """Every parameter and buffer (non-persistent ones too: NoisyLinear's noise)."""
    return [
        (name, tuple(tensor.shape), str(tensor.detach().cpu().numpy().dtype))
        for name, tensor in _tensors(policy)
    ]


def _tensors(policy: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*policy.named_parameters(), *policy.named_buffers()]


def publish_weights(policy: torch.nn.Module, weights: SharedArrays) -> None:
    with torch.no_grad():
        for name, tensor in _tensors(policy):
            torch.from_numpy(weights.arrays[name]).copy_(tensor.detach())


def load_published_weights(weights: SharedArrays, policy: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, tensor in _tensors(policy):
            tensor.copy_(torch.from_numpy(weights.arrays[name]))


def rollout_spec(n_steps: int, n_envs: int, obs_shape: tuple[int, ...]) -> ArraySpec:
    steps = (n_steps, n_envs)
    return [
        ("obs", (*steps, *obs_shape), "uint8"),
        ("actions", steps, "int64"),
        *((key, steps, "float32") for key in ("log_probs", "values", "rewards", "dones", "starts")),
        ("last_value", (n_envs,), "float32"),
        ("stop", (1,), "uint8"),
    ]


def shared_bytes(policy: torch.nn.Module, n_steps: int, n_envs: int, obs_shape: tuple) -> int:
    """The shared memory worker acting takes: the rollout and a copy of the weights."""
    return sum(
        int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize + _ALIGN
        for _, shape, dtype in [*weights_spec(policy), *rollout_spec(n_steps, n_envs, obs_shape)]
    )


def shared_memory_free() -> int | None:
    """Bytes free for shared memory (``/dev/shm``), or None where it is not a file system."""
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


@dataclass(frozen=True)
class ActingSetup:
    """What a worker needs to build its policy copy and find the shared arrays."""

    config: dict[str, Any]  # the run's MarioConfig, as a dict
    obs_shape: tuple[int, ...]
    n_actions: int
    n_steps: int
    gamma: float
    autocast_dtype: torch.dtype | None  # bf16 on a CPU that computes it natively, or None
    weights_name: str
    weights_spec: ArraySpec
    rollout_name: str
    rollout_spec: ArraySpec


class WorkerActor:
    """In an env worker: the policy copy, and its envs' episode starts and greedy probes."""

    def __init__(self, setup: ActingSetup, indices: list[int], worker: int) -> None:
        from mario_cli.config import MarioConfig
        from mario_cli.training.builders import build_policy

        torch.set_num_threads(1)  # one core per worker; the learner has its own threads
        self.worker = worker
        cfg = MarioConfig.model_validate(setup.config)
        self.policy, _ = build_policy(cfg, setup.obs_shape, setup.n_actions, torch.device("cpu"))
        self.policy.train()  # as the trainer's collector acts: noisy heads use their noise
        self.setup = setup
        self.indices = indices
        self.weights = SharedArrays(setup.weights_spec, setup.weights_name)
        self.rollout = SharedArrays(setup.rollout_spec, setup.rollout_name)
        self.starts = np.ones(len(indices), dtype=np.float32)
        self.greedy = np.zeros(len(indices), dtype=bool)

    def on_reset(self, infos: list[dict[str, Any]]) -> None:
        self.starts[:] = 1.0
        self.greedy[:] = [bool(info.get("greedy")) for info in infos]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.setup.autocast_dtype
        return torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()

    def play(self, group: Any, out: np.ndarray, arg: tuple[int, int]) -> dict[str, Any]:
        """``n_steps`` of this worker's envs into the shared rollout; what ended there.

        ``arg``: (agent steps before this rollout, the rollout's seed). The seed comes
        from the trainer's generator, so a seed gives one run and a resumed run, whose
        generator is restored, draws on where it stopped.
        """
        step_base, seed = arg
        torch.manual_seed(seed + 7919 * self.worker)
        load_published_weights(self.weights, self.policy)
        arrays = self.rollout.arrays
        rows = self.indices
        n_envs = out.shape[0]
        episodes: list[tuple[int, int, dict[str, Any]]] = []
        full = np.zeros(n_envs, dtype=np.int64)
        with torch.no_grad(), self._autocast():
            for t in range(self.setup.n_steps):
                if arrays["stop"][0]:
                    return {"stopped": True, "episodes": episodes}
                obs = out[rows]
                probing = (
                    {"deterministic": torch.from_numpy(self.greedy)} if self.greedy.any() else {}
                )
                actions, log_probs, values, _ = self.policy.act(
                    torch.from_numpy(obs), None, torch.from_numpy(self.starts), **probing
                )
                full[rows] = actions.numpy()
                arrays["obs"][t, rows] = obs
                arrays["actions"][t, rows] = full[rows]
                arrays["log_probs"][t, rows] = log_probs.float().numpy()
                arrays["values"][t, rows] = values.float().numpy()
                arrays["starts"][t, rows] = self.starts
                rewards, terminated, truncated, infos = group.step(full, out)
                rewards = np.asarray(rewards, dtype=np.float32)
                terminated = np.asarray(terminated, dtype=bool)
                truncated = np.asarray(truncated, dtype=bool)
                cut = np.flatnonzero(truncated & ~terminated)
                if cut.size:  # a truncated episode did not end in the game: bootstrap it
                    final = torch.from_numpy(np.stack([infos[i]["final_obs"] for i in cut]))
                    value = self.policy(final, None, torch.zeros(len(cut))).value.float()
                    rewards[cut] += self.setup.gamma * value.numpy()
                dones = (terminated | truncated).astype(np.float32)
                arrays["rewards"][t, rows] = rewards
                arrays["dones"][t, rows] = dones
                step = step_base + (t + 1) * n_envs
                for i, info in enumerate(infos):
                    if "episode" in info:
                        episodes.append((step, rows[i], info["episode"]))
                    if dones[i]:
                        self.greedy[i] = bool(info.get("next_greedy"))
                self.starts = dones
            last = self.policy(torch.from_numpy(out[rows]), None, torch.from_numpy(self.starts))
            arrays["last_value"][rows] = last.value.float().numpy()
        return {"stopped": False, "episodes": episodes}

    def close(self) -> None:
        self.weights.close()
        self.rollout.close()


class WorkerCollector:
    """The trainer's side: publish the weights, let the workers play, gather the rollout.

    What the trainer calls of :class:`~mario_cli.training.collector.Collector`
    (``reset``, ``collect``, ``autocast``), for synchronous training of a feed-forward
    policy on CPU with process env workers.
    """

    def __init__(
        self,
        venv: Any,
        config: dict[str, Any],
        policy: torch.nn.Module,
        n_steps: int,
        gamma: float,
        autocast_dtype: torch.dtype | None,
        timer: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.venv = venv
        self.timer = timer or (lambda _phase: contextlib.nullcontext())
        self.n_steps = n_steps
        self.autocast = contextlib.nullcontext  # the workers cast, each in its own process
        self.steps_collected = 0
        obs_shape = tuple(venv.single_observation_space.shape)
        self._weights = self._rollout = None
        try:
            self._weights = SharedArrays(weights_spec(policy))
            self._rollout = SharedArrays(rollout_spec(n_steps, venv.num_envs, obs_shape))
            setup = ActingSetup(
                config=config,
                obs_shape=obs_shape,
                n_actions=int(venv.single_action_space.n),
                n_steps=n_steps,
                gamma=gamma,
                autocast_dtype=autocast_dtype,
                weights_name=self._weights.name,
                weights_spec=self._weights.spec,
                rollout_name=self._rollout.name,
                rollout_spec=self._rollout.spec,
            )
            venv.attach_actors(WorkerActor, setup)
        except BaseException:
            self.close()
            raise

    def reset(self, seed: int | None, policy: torch.nn.Module, steps_done: int) -> None:
        self.venv.reset(seed=seed)  # the workers' actors take their envs' starts from it
        self.steps_collected = steps_done

    def collect(
        self, policy: torch.nn.Module, storage: RolloutStorage, should_stop: Callable[[], bool]
    ) -> RolloutBatch | None:
        """``n_steps`` of every env, played by the workers; None if a stop came first.

        Synchronous training only (no actor thread shares the policy), so no lock."""
        arrays = self._rollout.arrays
        with self.timer("storing"):  # the trainer's part: weights out, rollout in
            policy.reset_noise()
            publish_weights(policy, self._weights)
            arrays["stop"][0] = 0
        seed = int(torch.randint(2**31, ()))  # the trainer's generator: resumed with the run
        with self.timer("env_wait"):
            results = self.venv.play_rollout(
                (self.steps_collected, seed), should_stop, arrays["stop"]
            )
        if results is None:
            storage.step = 0
            return None
        with self.timer("storing"):
            for key in ("obs", "actions", "log_probs", "values", "rewards", "dones", "starts"):
                getattr(storage, key).copy_(torch.from_numpy(arrays[key]))
            storage.step = self.n_steps
            device = storage.obs.device
            last_obs = torch.from_numpy(self.venv.current_obs()).to(device)
            last_value = torch.from_numpy(arrays["last_value"].copy()).to(device)
            batch = storage.batch(last_value, last_obs)
        batch.episodes = sorted(
            (episode for result in results for episode in result["episodes"]),
            key=lambda item: (item[0], item[1]),
        )
        self.steps_collected += self.n_steps * self.venv.num_envs
        return batch

    def close(self) -> None:
        for arrays in (self._weights, self._rollout):
            if arrays is not None:
                arrays.close()
