"""What one training sample costs in CPU time, and the steps/s those costs allow.

Each cost is measured on its own, with nothing else running in this process:

- the emulator: one env through the whole configured pipeline, CPU-ms per agent step;
- inference: the policy acting on one thread on a batch of as many observations as
  training acts on at once (one worker's envs when the workers act, else one group
  of envs, or all of them), CPU-ms per agent step;
- the learner: one full update of the configured algorithm (epochs, minibatch,
  replay) on a rollout of the configured size, CPU-ms per sample.

A machine with C cores can then train at most ``C * 1000 / (sum of the three)``
agent steps/s: ``limit_sps``. ``bench train`` reports its steps/s against it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from mario_cli.config import EnvConfig, MarioConfig


@dataclass(frozen=True)
class SampleCosts:
    emulator_ms: float
    inference_ms: float
    learner_ms: float
    cores: int

    @property
    def total_ms(self) -> float:
        return self.emulator_ms + self.inference_ms + self.learner_ms

    @property
    def limit_sps(self) -> float:
        return self.cores * 1000.0 / self.total_ms

    def to_dict(self) -> dict[str, float]:
        return {
            **{k: round(v, 3) for k, v in asdict(self).items()},
            "total_ms": round(self.total_ms, 3),
            "limit_sps": round(self.limit_sps, 2),
        }


def cpu_count() -> int:
    return os.cpu_count() or 1


def emulator_ms_per_step(
    cfg: EnvConfig, steps: int = 400, seed: int = 0
) -> tuple[float, tuple, int]:
    """(CPU-ms per agent step of one env, its observation shape, its action count)."""
    from mario_cli.envs import make_env

    env = make_env(cfg)
    try:
        cpu = time_random_steps(env, steps, seed, time.process_time)
        return 1000.0 * cpu / steps, tuple(env.observation_space.shape), int(env.action_space.n)
    finally:
        env.close()


def time_random_steps(env: Any, steps: int, seed: int, clock: Callable[[], float]) -> float:
    """``clock`` time of ``steps`` random actions in ``env``, resetting as episodes end."""
    env.reset(seed=seed)
    choices = np.random.default_rng(seed).integers(env.action_space.n, size=steps)
    start = clock()
    for action in choices:
        _, _, terminated, truncated, _ = env.step(int(action))
        if terminated or truncated:
            env.reset()
    return clock() - start


def _random_obs(shape: tuple[int, ...], rng: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy(rng.integers(0, 256, size=shape, dtype=np.uint8))


def training_acting_batch(
    cfg: MarioConfig, policy: torch.nn.Module, optimiser: Any, obs_shape: tuple
) -> int:
    """How many observations one policy call acts on in training with ``cfg``."""
    from mario_cli.envs.vector import acting_batch
    from mario_cli.plugins import get_host
    from mario_cli.training.builders import build_algorithm
    from mario_cli.training.device import resolve_device
    from mario_cli.training.trainer import acting_in_workers

    # acting_in_workers reads only the algorithm's asynchronous flag: a built-in
    # algorithm's class has it; any other factory is built to be asked.
    factory = get_host()["algorithms"].get(cfg.algo.algo)
    if isinstance(factory, type) and hasattr(factory, "asynchronous"):
        algorithm = factory
    else:
        algorithm = build_algorithm(cfg, policy, optimiser, obs_shape)
    device, _ = resolve_device(cfg.train.device)
    workers_act = acting_in_workers(cfg, device, policy, algorithm, obs_shape)
    return acting_batch(cfg.env, policy.recurrent, workers_act)


def inference_ms_per_step(
    cfg: MarioConfig, obs_shape: tuple, n_actions: int, calls: int = 30, seed: int = 0
) -> float:
    """CPU-ms per agent step of one batched policy call on one thread, at the batch
    training acts on (``acting_batch``: one worker's envs when the workers act, else
    the collector's group): its weights are read once a call whatever the batch, so a
    call on 4 envs costs ~4/5 of one on 8 here, and the batch decides the cost per step."""
    from mario_cli.training.builders import build_policy
    from mario_cli.training.device import amp_settings
    from mario_cli.training.optim import GradientStepper

    device = torch.device("cpu")
    policy, _ = build_policy(cfg, obs_shape, n_actions, device)
    _, amp_dtype, _ = amp_settings(device, cfg.train.amp)
    # The collector's autocast is the optimiser's: the same context here.
    stepper = GradientStepper(policy.parameters(), cfg.algo, 1, device, amp_dtype)
    autocast = stepper.autocast
    n = training_acting_batch(cfg, policy, stepper, obs_shape)
    obs = _random_obs((n, *obs_shape), np.random.default_rng(seed))
    done = torch.zeros(n)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # As the trainer collects: one autocast region, no_grad (autocast then casts the
        # weights once, at the warm-up call, and not again; inference_mode would stop it).
        with torch.no_grad(), autocast():
            state = policy.initial_state(n)
            policy.act(obs, state, done)  # warm-up: first-call allocations
            start = time.process_time()
            for _ in range(calls):
                _, _, _, state = policy.act(obs, state, done)
            cpu = time.process_time() - start
    finally:
        torch.set_num_threads(previous)
    return 1000.0 * cpu / (calls * n)


def learner_ms_per_sample(
    cfg: MarioConfig, obs_shape: tuple, n_actions: int, seed: int = 0
) -> float:
    """CPU-ms per sample of one full update at the configured threads, epochs and batch.

    The rollout is random data; the KL early stop is off so every configured epoch
    runs (the cost of the update as configured, not of one that stops early).
    """
    from mario_cli.training.builders import build_algorithm, build_policy
    from mario_cli.training.device import amp_settings, configure_threads, keep_freed_memory
    from mario_cli.training.optim import GradientStepper
    from mario_cli.training.rollout import RolloutStorage

    cfg = cfg.model_copy(deep=True)
    cfg.algo.target_kl = None
    device = torch.device("cpu")
    configure_threads(cfg.train.torch_threads)
    keep_freed_memory()  # as the trainer does
    torch.manual_seed(seed)
    policy, _ = build_policy(cfg, obs_shape, n_actions, device)
    _, amp_dtype, use_scaler = amp_settings(device, cfg.train.amp)
    optimiser = GradientStepper(policy.parameters(), cfg.algo, 10, device, amp_dtype, use_scaler)
    algorithm = build_algorithm(cfg, policy, optimiser, obs_shape)
    steps, n = cfg.algo.n_steps, cfg.env.n_envs
    rng = np.random.default_rng(seed)
    storage = RolloutStorage(steps, n, obs_shape, device)
    state = policy.initial_state(n)
    with torch.inference_mode():
        for _ in range(steps):
            obs = _random_obs((n, *obs_shape), rng)
            starts = torch.zeros(n)
            actions, log_probs, values, state = policy.act(obs, state, starts)
            rewards = torch.from_numpy(rng.normal(0.5, 1.0, size=n).astype(np.float32))
            dones = torch.from_numpy((rng.random(n) < 0.01).astype(np.float32))
            storage.add(obs, actions, log_probs, values, rewards, dones, starts)
    batch = storage.batch(torch.zeros(n), _random_obs((n, *obs_shape), rng), None)
    if policy.recurrent:
        batch.initial_state = policy.initial_state(n)
    algorithm.update(batch)  # warm-up: thread pool start and first-call allocations
    start = time.process_time()
    algorithm.update(batch)
    cpu = time.process_time() - start
    return 1000.0 * cpu / (steps * n)


def measure_sample_costs(cfg: MarioConfig, env_steps: int = 400) -> SampleCosts:
    """The three per-sample costs of ``cfg``, each measured on its own."""
    emulator, obs_shape, n_actions = emulator_ms_per_step(cfg.env, env_steps, cfg.train.seed)
    return SampleCosts(
        emulator_ms=emulator,
        inference_ms=inference_ms_per_step(cfg, obs_shape, n_actions, seed=cfg.train.seed),
        learner_ms=learner_ms_per_sample(cfg, obs_shape, n_actions, seed=cfg.train.seed),
        cores=cpu_count(),
    )


class CpuMeter:
    """CPU seconds used by this process and the given worker processes since ``start``."""

    def __init__(self) -> None:
        import psutil  # here, not in start(): its import would count as loop time

        self._psutil = psutil
        self.own_seconds = 0.0
        self.worker_seconds = 0.0
        self.wall_seconds = 0.0
        self._start: tuple[float, float, float] | None = None

    def _workers(self, pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            try:
                times = self._psutil.Process(pid).cpu_times()
            except self._psutil.Error:  # a worker that already exited
                continue
            total += times.user + times.system
        return total

    def start(self, pids: list[int]) -> None:
        self._start = (time.process_time(), self._workers(pids), time.perf_counter())

    def stop(self, pids: list[int]) -> None:
        if self._start is None:
            return
        own, workers, wall = self._start
        self.own_seconds = time.process_time() - own
        self.worker_seconds = self._workers(pids) - workers
        self.wall_seconds = time.perf_counter() - wall

    @property
    def cpu_seconds(self) -> float:
        return self.own_seconds + self.worker_seconds

    @property
    def busy(self) -> float | None:
        """CPU time over wall time x cores: 1.0 is every core busy all the time."""
        if self.wall_seconds <= 0:
            return None
        return self.cpu_seconds / (self.wall_seconds * cpu_count())


def in_run_cpu_ms(
    meter: CpuMeter, phase_cpu: dict[str, float], steps: int, cores: int
) -> dict[str, float]:
    """Where the cores' time went during a measured stretch of training, in ms per agent
    step: the env workers; this process while updating, in its other once-per-iteration
    work (repair, best checks, logging), and the rest of the time: collecting (acting,
    messages, storing); and idle cores. The parts sum to ``total_per_step`` = cores x
    wall ÷ steps: what a step costs.

    ``phase_cpu`` is the process CPU seconds of ``PhaseTimer.CPU_PHASES`` over the stretch.
    """
    per_step = 1000.0 / steps
    update = phase_cpu["update"]
    other = phase_cpu["repair"] + phase_cpu["best"] + phase_cpu["logging"]
    total = cores * meter.wall_seconds
    parts = {
        "workers_per_step": meter.worker_seconds,
        "trainer_collect_per_step": meter.own_seconds - update - other,
        "trainer_update_per_step": update,
        "trainer_other_per_step": other,
        "idle_per_step": total - meter.cpu_seconds,
        "total_per_step": total,
    }
    return {name: round(seconds * per_step, 3) for name, seconds in parts.items()}
