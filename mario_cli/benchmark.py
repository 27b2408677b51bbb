"""Throughput measurements of the env pipeline (used by ``mario bench env``)."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mario_cli.config import EnvConfig, MarioConfig
from mario_cli.envs import VectorEnv, make_env
from mario_cli.envs.factory import stage_specs
from mario_cli.envs.stages import action_bytes
from mario_cli.envs.vector import default_worker_count, worker_context
from mario_cli.errors import MarioError


@dataclass
class EnvBenchResult:
    raw_fps: float
    single_env_sps: float
    vector_env_sps: float
    n_envs: int
    n_workers: int
    frame_skip: int
    efficiency: float
    scaling: float
    cpu_count: int
    rounds: int = 1
    scaling_rounds: list[float] = field(default_factory=list)  # vector / one env, per round
    # n_workers bare emulators in as many processes at once, against one alone: what
    # the host gives parallel emulation with no pipeline at all (the scaling's ceiling)
    raw_parallel_fps: float = 0.0
    host_scaling: float = 0.0
    host_scaling_rounds: list[float] = field(default_factory=list)
    # The configured envs (cfg.n_envs) stepped as training with the trainer acting steps
    # them: in step_groups groups, the next group sent before the last one is collected
    # (no policy).
    pipelined_n_envs: int = 0
    pipelined_groups: int = 0
    pipelined_env_sps: float = 0.0
    pipelined_scaling: float = 0.0
    pipelined_scaling_rounds: list[float] = field(default_factory=list)
    # The same n_envs, each worker stepping its own envs through a whole rollout on one
    # command, as training with the workers acting does (random actions, no policy).
    rollout_env_sps: float = 0.0
    rollout_scaling: float = 0.0
    rollout_scaling_rounds: list[float] = field(default_factory=list)
    # The lockstep scaling split in two, per round: scaling = n_workers x env_speed x busy.
    # env_speed: one env's step time alone ÷ an env step's time inside a worker with the
    # others stepping beside it (the host's share; host_scaling ÷ n_workers for bare
    # emulators). busy: the share of the wall time the workers spent stepping, the rest
    # being round trips and the wait for the slowest worker (the pipeline's share).
    lockstep_env_step_ms: float = 0.0
    lockstep_env_speed: float = 0.0
    lockstep_env_speed_rounds: list[float] = field(default_factory=list)
    lockstep_busy: float = 0.0
    lockstep_busy_rounds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_raw_fps(cfg: EnvConfig, frames: int, seed: int = 0) -> float:
    """Frames/s of one bare gym-super-mario-bros env (its own ``step``, no wrappers)."""
    from gym_super_mario_bros import SuperMarioBrosEnv

    spec = stage_specs(cfg)[0]
    env = SuperMarioBrosEnv(lost_levels=spec.lost_levels, target=spec.target)
    buttons = action_bytes(cfg.movement)
    rng = np.random.default_rng(seed)
    choices = rng.integers(len(buttons), size=frames)
    env.reset()
    start = time.perf_counter()
    for action in choices:
        _, _, terminated, truncated, _ = env.step(buttons[action])
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return frames / elapsed


def _raw_fps_after(barrier: Any, results: Any, cfg: EnvConfig, frames: int, seed: int) -> None:
    try:
        import gym_super_mario_bros  # noqa: F401  (imported before the clock starts)

        barrier.wait()
        results.put(measure_raw_fps(cfg, frames, seed))
    except Exception as exc:  # the parent reports it as one line
        barrier.abort()  # the others stop waiting for this one
        results.put(f"{type(exc).__name__}: {exc}")


def measure_raw_fps_parallel(cfg: EnvConfig, frames: int, processes: int) -> float:
    """Frames/s of ``processes`` bare emulators in as many processes, all at once.

    Each process measures its own frames/s once every process has started; the sum is
    what this host gives parallel emulation, with no pipes, wrappers or policy.
    """
    ctx = worker_context()
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [
        ctx.Process(target=_raw_fps_after, args=(barrier, results, cfg, frames, seed))
        for seed in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        total = 0.0
        for _ in workers:
            value = _next_probe_result(results, workers)
            if isinstance(value, str):
                raise MarioError(f"a bare-emulator process failed: {value}")
            total += value
        return total
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()


def _next_probe_result(results: Any, workers: list[Any]) -> float | str:
    """The next figure (or error) a probe process reported; an error if one died silently."""
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            for worker in workers:
                if worker.exitcode not in (None, 0):
                    raise MarioError(
                        f"a bare-emulator process exited with code {worker.exitcode} before "
                        "reporting its frames/s (killed, or out of memory?): run it again"
                    ) from None


def measure_single_env_sps(cfg: EnvConfig, steps: int, seed: int = 0) -> float:
    """Agent steps/s of one env through the whole configured pipeline."""
    from mario_cli.costs import time_random_steps

    env = make_env(cfg)
    try:
        return steps / time_random_steps(env, steps, seed, time.perf_counter)
    finally:
        env.close()


@dataclass
class LockstepMeasure:
    """``n_envs`` envs in worker processes stepped in lockstep, and where the time went."""

    sps: float  # agent steps/s summed over the envs
    n_workers: int
    env_step_ms: float  # one env step inside a worker, the emulators side by side
    busy: float  # share of the wall time the workers spent stepping (mean over workers)


def measure_vector_env_sps(
    cfg: EnvConfig, n_envs: int, steps: int, n_workers: int | None = None, seed: int = 0
) -> LockstepMeasure:
    """Agent steps/s summed over ``n_envs`` envs in worker processes, stepped in lockstep.

    ``sps`` ÷ one env's = ``n_workers`` × (one env's step time alone ÷ ``env_step_ms``) ×
    ``busy``: the host's slowdown of emulators side by side, and the workers' wait for
    the parent and for each other.
    """
    with VectorEnv(cfg, n_envs=n_envs, seed=seed, mode="process", n_workers=n_workers) as venv:
        venv.reset()
        rng = np.random.default_rng(seed)
        n_actions = venv.single_action_space.n
        batches = max(1, steps // n_envs)
        actions = rng.integers(n_actions, size=(batches, n_envs))
        venv.lockstep_seconds = [0.0] * venv.n_workers
        start = time.perf_counter()
        for batch in actions:
            venv.step(batch)
        elapsed = time.perf_counter() - start
        stepping = sum(venv.lockstep_seconds)
        return LockstepMeasure(
            sps=batches * n_envs / elapsed,
            n_workers=venv.n_workers,
            env_step_ms=1000 * stepping / (batches * n_envs),
            busy=stepping / venv.n_workers / elapsed,
        )


class RandomActor:
    """In an env worker: random actions for its envs, a whole rollout per command."""

    def __init__(self, seed: int, indices: list[int], worker: int) -> None:
        self.rng = np.random.default_rng([seed, worker])
        self.indices = indices

    def on_reset(self, infos: list[dict[str, Any]]) -> None:
        pass

    def play(self, group: Any, out: np.ndarray, steps: int) -> dict[str, Any]:
        n_actions = group.spaces[1].n
        actions = np.zeros(out.shape[0], dtype=np.int64)
        for _ in range(steps):
            actions[self.indices] = self.rng.integers(n_actions, size=len(self.indices))
            group.step(actions, out)
        return {"steps": steps * len(self.indices)}

    def close(self) -> None:
        pass


def measure_rollout_env_sps(
    cfg: EnvConfig, n_envs: int, steps: int, n_workers: int | None = None, seed: int = 0
) -> float:
    """Agent steps/s of ``n_envs`` envs in worker processes, each worker stepping its own
    envs ``steps // n_envs`` times on one command: no round trip per step, as training
    steps them when the workers act (``--acting``)."""
    with VectorEnv(cfg, n_envs=n_envs, seed=seed, mode="process", n_workers=n_workers) as venv:
        venv.reset()
        venv.attach_actors(RandomActor, seed)
        per_env = max(1, steps // n_envs)
        start = time.perf_counter()
        # A benchmark's rollout is short: its actors never stop early (so a result always
        # comes back), no stop flag reaches them and Ctrl-C waits for the rollout
        # (seconds) before closing.
        results = venv.play_rollout(per_env, lambda: False, np.zeros(1, dtype=np.uint8))
        elapsed = time.perf_counter() - start
        return sum(result["steps"] for result in results) / elapsed


def measure_pipelined_env_sps(
    cfg: EnvConfig, steps: int, n_workers: int | None = None, seed: int = 0
) -> float:
    """Agent steps/s of ``cfg.n_envs`` envs in ``cfg.step_groups`` groups, double-buffered.

    This drives the vector env as training's collector does, with random actions in
    place of the policy: every group but one is always being stepped, so a worker
    finds its next command waiting instead of idling through a round trip.
    """
    with VectorEnv(
        cfg, seed=seed, mode="process", n_workers=n_workers, n_groups=cfg.step_groups
    ) as venv:
        venv.reset()
        rng = np.random.default_rng(seed)
        n_actions = venv.single_action_space.n
        spans = venv.groups
        turns = max(len(spans), steps * len(spans) // venv.num_envs)
        stepped = 0
        start = time.perf_counter()  # filling the pipeline counts: never an overstatement
        for span in spans:
            venv.step_async(span, rng.integers(n_actions, size=span[1] - span[0]))
        for turn in range(turns):
            span = spans[turn % len(spans)]
            venv.step_wait(span)
            stepped += span[1] - span[0]
            venv.step_async(span, rng.integers(n_actions, size=span[1] - span[0]))
        elapsed = time.perf_counter() - start
        for span in spans:  # the steps still in flight are not counted
            venv.step_wait(span)
        return stepped / elapsed


def bench_env(
    cfg: EnvConfig,
    n_envs: int,
    steps: int,
    n_workers: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
    rounds: int = 1,
) -> EnvBenchResult:
    """Raw emulator, one full env and the vector env, measured one after another.

    With ``rounds`` > 1 the measurements alternate that many times and the
    figures are their means: this host's speed drifts by ±20% from minute to minute,
    and a ratio of measurements taken side by side, round by round, drifts less.
    """
    raws, parallels, singles, vectors, pipelined, rollouts = [], [], [], [], [], []
    lockstep: list[LockstepMeasure] = []
    workers = 0
    processes = min(n_workers or cfg.n_workers or default_worker_count(n_envs), n_envs)
    for index in range(rounds):
        of = f" (round {index + 1}/{rounds})" if rounds > 1 else ""
        progress("bare emulator" + of)
        raws.append(measure_raw_fps(cfg, frames=steps * cfg.frame_skip))
        progress(f"{processes} bare emulators at once" + of)
        parallels.append(measure_raw_fps_parallel(cfg, steps * cfg.frame_skip, processes))
        progress("one env, full pipeline" + of)
        single_before = measure_single_env_sps(cfg, steps)
        progress(f"{n_envs} envs in worker processes" + of)
        lockstep.append(measure_vector_env_sps(cfg, n_envs, steps * max(1, n_envs // 2), n_workers))
        vectors.append(lockstep[-1].sps)
        workers = lockstep[-1].n_workers
        progress(f"{n_envs} envs in worker processes, a whole rollout per command" + of)
        rollouts.append(
            measure_rollout_env_sps(cfg, n_envs, steps * max(1, n_envs // 2), n_workers)
        )
        progress(f"{cfg.n_envs} envs in {cfg.step_groups} groups, double-buffered" + of)
        pipelined.append(measure_pipelined_env_sps(cfg, steps * max(1, cfg.n_envs // 2), n_workers))
        # One env again, after the envs in workers: the scalings divide by the mean of
        # the two, which stands for the middle of the round rather than its start.
        progress("one env, full pipeline again" + of)
        singles.append((single_before + measure_single_env_sps(cfg, steps)) / 2)
    # The ratios come from the figures as printed, so a reader can recompute them.
    raws, parallels, singles, vectors, pipelined, rollouts = (
        [round(value, 1) for value in values]
        for values in (raws, parallels, singles, vectors, pipelined, rollouts)
    )
    raw_fps = round(float(np.mean(raws)), 1)
    raw_parallel = round(float(np.mean(parallels)), 1)
    single = round(float(np.mean(singles)), 1)
    vector = round(float(np.mean(vectors)), 1)
    pipelined_sps = round(float(np.mean(pipelined)), 1)
    rollout_sps = round(float(np.mean(rollouts)), 1)
    env_step_ms = [round(measure.env_step_ms, 3) for measure in lockstep]
    speeds = [round(1000 / s / ms, 3) for s, ms in zip(singles, env_step_ms, strict=True)]
    busy = [round(measure.busy, 3) for measure in lockstep]
    return EnvBenchResult(
        raw_fps=raw_fps,
        single_env_sps=single,
        vector_env_sps=vector,
        n_envs=n_envs,
        n_workers=workers,
        frame_skip=cfg.frame_skip,
        efficiency=round(single / (raw_fps / cfg.frame_skip), 3),
        scaling=round(vector / single, 3),
        cpu_count=os.cpu_count() or 1,
        rounds=rounds,
        scaling_rounds=[round(v / s, 3) for v, s in zip(vectors, singles, strict=True)],
        raw_parallel_fps=raw_parallel,
        host_scaling=round(raw_parallel / raw_fps, 3),
        host_scaling_rounds=[round(p / r, 3) for p, r in zip(parallels, raws, strict=True)],
        pipelined_n_envs=cfg.n_envs,
        pipelined_groups=cfg.step_groups,
        pipelined_env_sps=pipelined_sps,
        pipelined_scaling=round(pipelined_sps / single, 3),
        pipelined_scaling_rounds=[round(v / s, 3) for v, s in zip(pipelined, singles, strict=True)],
        rollout_env_sps=rollout_sps,
        rollout_scaling=round(rollout_sps / single, 3),
        rollout_scaling_rounds=[round(v / s, 3) for v, s in zip(rollouts, singles, strict=True)],
        lockstep_env_step_ms=round(float(np.mean(env_step_ms)), 3),
        lockstep_env_speed=round(1000 / single / float(np.mean(env_step_ms)), 3),
        lockstep_env_speed_rounds=speeds,
        lockstep_busy=round(float(np.mean(busy)), 3),
        lockstep_busy_rounds=busy,
    )


def env_ceiling_sps(cfg: EnvConfig, frames: int = 1500) -> tuple[float, float]:
    """(bare emulator frames/s of one core, agent steps/s all cores could emulate)."""
    raw = measure_raw_fps(cfg, frames)
    return raw, raw * (os.cpu_count() or 1) / cfg.frame_skip


def env_parallel_ceiling_sps(cfg: EnvConfig, frames: int = 1500) -> float:
    """Agent steps/s of bare emulators running on every core at once, summed.

    ``env_ceiling_sps`` assumes every core emulates as fast as one alone; on a host
    whose cores share a physical core or its caches with others, they do not, and
    this says what the host actually gives.
    """
    fps = measure_raw_fps_parallel(cfg, frames, os.cpu_count() or 1)
    return fps / cfg.frame_skip


# Rounds whose bare-emulator ceilings differ by more than this factor: the host drifted.
_DRIFT_FACTOR = 1.15


# Cores that emulate together at under this share of cores x one alone: they share
# physical cores (SMT siblings) or caches, and cores x one core overstates the ceiling.
_SHARED_CORES_SHARE = 0.85


def shared_cores(host_scaling: float, cores: int) -> bool:
    """Whether all cores at once gave emulation well under cores x one core alone."""
    return cores > 1 and host_scaling < _SHARED_CORES_SHARE * cores


def host_drift(ceilings: list[float]) -> tuple[float, float] | None:
    """(lowest, highest) ceiling when they differ by more than 15%, else None."""
    low, high = min(ceilings), max(ceilings)
    return (low, high) if high > _DRIFT_FACTOR * low else None


def bench_mario_training(cfg: MarioConfig, steps: int) -> dict[str, object]:
    """Train the given config for ``steps`` agent steps; steps/s and where the time went."""
    import tempfile

    from mario_cli.costs import CpuMeter, cpu_count, in_run_cpu_ms
    from mario_cli.training.trainer import Trainer

    rollout = cfg.algo.n_steps * cfg.env.n_envs
    cfg.train.total_timesteps = max(rollout, (steps + rollout - 1) // rollout * rollout)
    cfg.train.save_freq = 10**12
    meter = CpuMeter()
    phase_cpu: list[dict[str, float]] = []  # the loop phases' CPU at the meter's start, stop

    # Measured from the end of the first iteration to the end of the last, so start-up
    # (worker spawn, first-call allocations) is not counted as idle cores.
    def on_iteration(step: int, _metrics: dict) -> None:
        with trainer.timer("logging"):  # measuring is part of the loop's wall time too
            pids = trainer.venv.worker_pids if trainer.venv is not None else []
            if step == rollout:
                meter.start(pids)
                phase_cpu.append(dict(trainer.timer.cpu_seconds))
            elif step >= cfg.train.total_timesteps:
                meter.stop(pids)
                phase_cpu.append(dict(trainer.timer.cpu_seconds))

    with tempfile.TemporaryDirectory() as tmp:
        cfg.train.artifacts_dir = Path(tmp)
        trainer = Trainer(cfg, on_iteration=on_iteration)
        finished = trainer.train()
    wall = trainer.loop_seconds
    in_run = None
    if len(phase_cpu) == 2:  # more than one iteration: a measured stretch
        first, last = phase_cpu
        spent = {phase: last[phase] - first[phase] for phase in last}
        in_run = in_run_cpu_ms(meter, spent, finished.step - rollout, cpu_count())
    return {
        "steps": finished.step,
        "wall_seconds": round(wall, 3),
        "sps": round(finished.step / wall, 2),
        "breakdown": {k: round(v, 3) for k, v in trainer.timer.seconds.items()},
        "in_run_cpu_ms": in_run,
        "cpu_busy": None if meter.busy is None else round(meter.busy, 3),
    }


def bench_sb3_training(cfg: MarioConfig, steps: int) -> dict[str, object]:
    """Stable-Baselines3 PPO, classic settings, same env count, for ``steps`` agent steps.

    It runs as ``mario bench sb3`` in a process of its own, as a user would run it: not
    in this one, whose settings (threads, memory reuse) mario's trainer has changed.
    """
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-m", "mario_cli", "bench", "sb3",
            "--total-timesteps", str(steps), "--n-envs", str(cfg.env.n_envs),
            "--env-id", cfg.env.env_id, "--seed", str(cfg.train.seed),
            "--artifacts-dir", tmp,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        raise MarioError(f"the Stable-Baselines3 run failed: {lines[-1]}")
    summary = json.loads(done.stdout)
    return {
        "steps": int(summary["global_step"]),
        "sps": round(summary["sps"], 2),
        "learn_seconds": round(summary["learn_seconds"], 3),
        "setup_seconds": round(summary["setup_seconds"], 3),
        "collect_seconds": round(summary["collect_seconds"], 3),
    }


def _mean_breakdown(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per phase of the training loop, the mean over runs."""
    return {
        phase: round(float(np.mean([r["breakdown"][phase] for r in runs])), 3)
        for phase in runs[0]["breakdown"]
    }


def _mean_or_none(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(np.mean(present)), 3) if present else None


def bench_train(
    cfg: MarioConfig,
    steps: int,
    vs_sb3: bool = False,
    rounds: int = 1,
    progress: Callable[[str], None] = lambda _: None,
    same_settings: bool = False,
) -> dict[str, object]:
    """mario (and optionally SB3) training throughput, alternating runs when comparing.

    ``same_settings`` adds, in every round, mario trained with SB3's classic settings
    (``same_settings_config``), so ``ratio_vs_sb3_same_settings`` compares engineering
    alone; ``ratio_vs_sb3`` compares the defaults.
    """
    from mario_cli.costs import emulator_ms_per_step, measure_sample_costs

    mario_runs, same_runs, sb3_runs, raws, ceilings, parallels = [], [], [], [], [], []
    costs = []
    cores = os.cpu_count() or 1
    for round_index in range(rounds):
        # The ceilings and the emulator's cost are measured just before and just after
        # each round's training, and their means taken (the learner's and inference's
        # costs, seconds each, just before): this host's speed drifts by ±20-40% from
        # minute to minute, and a ratio of figures taken minutes apart would measure
        # the drift.
        of = f"round {round_index + 1}/{rounds}"
        progress(f"per-sample costs: emulator, inference, learner, {of}")
        cost = measure_sample_costs(cfg.model_copy(deep=True))
        progress(f"bare emulator, {of}")
        before = env_ceiling_sps(cfg.env)
        progress(f"{cores} bare emulators at once, {of}")
        parallel_before = env_parallel_ceiling_sps(cfg.env)
        progress(f"mario training, {of}")
        mario_runs.append(bench_mario_training(cfg.model_copy(deep=True), steps))
        progress(f"bare emulator again, {of}")
        after = env_ceiling_sps(cfg.env)
        progress(f"{cores} bare emulators at once again, {of}")
        parallel_after = env_parallel_ceiling_sps(cfg.env)
        progress(f"the emulator's per-sample cost again, {of}")
        emulator_after = emulator_ms_per_step(cfg.env, seed=cfg.train.seed)[0]
        costs.append(replace(cost, emulator_ms=(cost.emulator_ms + emulator_after) / 2))
        raws.append((before[0] + after[0]) / 2)
        ceilings.append((before[1] + after[1]) / 2)
        parallels.append((parallel_before + parallel_after) / 2)
        if same_settings:
            from mario_cli.baselines.sb3_ppo import same_settings_config

            progress(f"mario with SB3's settings, round {round_index + 1}/{rounds}")
            same_runs.append(bench_mario_training(same_settings_config(cfg), steps))
        if vs_sb3:
            progress(f"Stable-Baselines3 PPO, round {round_index + 1}/{rounds}")
            sb3_runs.append(bench_sb3_training(cfg, steps))
    sps = float(np.mean([r["sps"] for r in mario_runs]))
    ceiling = float(np.mean(ceilings))
    parallel = float(np.mean(parallels))
    breakdown = _mean_breakdown(mario_runs)
    # Averaged in steps/s like the ceilings, so the ratio lies between the rounds' ratios
    # (the limit of the mean costs would let the slowest round set it).
    limit = float(np.mean([c.limit_sps for c in costs]))
    result: dict[str, object] = {
        "sps": round(sps, 2),
        "env_ceiling_sps": round(ceiling, 2),
        "ratio_to_ceiling": round(sps / ceiling, 3),
        "ratio_to_ceiling_rounds": [
            round(run["sps"] / c, 3) for run, c in zip(mario_runs, ceilings, strict=True)
        ],
        "env_ceiling_sps_rounds": [round(c, 2) for c in ceilings],
        # What the cores gave emulation all at once, and that as a share of cores x one
        # core alone: the part of a low ratio_to_ceiling that is the host's, not mario's.
        "env_parallel_ceiling_sps": round(parallel, 2),
        "env_parallel_ceiling_sps_rounds": [round(p, 2) for p in parallels],
        "host_scaling": round(parallel * cores / ceiling, 3),
        "host_scaling_rounds": [
            round(p * cores / c, 3) for p, c in zip(parallels, ceilings, strict=True)
        ],
        "ratio_to_parallel_ceiling": round(sps / parallel, 3),
        "ratio_to_parallel_ceiling_rounds": [
            round(run["sps"] / p, 3) for run, p in zip(mario_runs, parallels, strict=True)
        ],
        "breakdown": breakdown,
        "wall_seconds": round(float(np.mean([r["wall_seconds"] for r in mario_runs])), 3),
        "steps": mario_runs[0]["steps"],
        "raw_fps": round(float(np.mean(raws)), 1),
        "n_envs": cfg.env.n_envs,
        "cpu_count": cores,
        "rounds": rounds,
        "cpu_busy": _mean_or_none([r["cpu_busy"] for r in mario_runs]),
        "costs_ms": {  # the means of the rounds' costs (the limit is the mean of theirs)
            "emulator_per_step": round(float(np.mean([c.emulator_ms for c in costs])), 3),
            "inference_per_step": round(float(np.mean([c.inference_ms for c in costs])), 3),
            "learner_per_sample": round(float(np.mean([c.learner_ms for c in costs])), 3),
        },
        "limit_sps": round(limit, 2),
        "ratio_to_limit": round(sps / limit, 3),
        "limit_sps_rounds": [round(c.limit_sps, 2) for c in costs],
        "ratio_to_limit_rounds": [
            round(run["sps"] / c.limit_sps, 3) for run, c in zip(mario_runs, costs, strict=True)
        ],
    }
    measured = [r["in_run_cpu_ms"] for r in mario_runs if r["in_run_cpu_ms"] is not None]
    if measured:  # where the cores' time went while training, beside the costs above
        result["in_run_cpu_ms"] = {
            part: round(float(np.mean([m[part] for m in measured])), 3) for part in measured[0]
        }
    if same_settings:  # where its time goes: the comparison is engineering alone
        result["same_settings_sps"] = round(float(np.mean([r["sps"] for r in same_runs])), 2)
        result["same_settings_breakdown"] = _mean_breakdown(same_runs)
        result["same_settings_cpu_busy"] = _mean_or_none([r["cpu_busy"] for r in same_runs])
    if vs_sb3:
        sb3_sps = float(np.mean([r["sps"] for r in sb3_runs]))
        result["sb3_sps"] = round(sb3_sps, 2)
        # its clock, like mario's, leaves out spawning the envs and building the model
        for key in ("steps", "learn_seconds", "setup_seconds", "collect_seconds"):
            result[f"sb3_{key}"] = round(float(np.mean([r[key] for r in sb3_runs])), 3)
        # where SB3's learning time goes, beside mario's breakdown: collecting rollouts
        # (stepping, inference, returns), and the rest, its PPO update
        result["sb3_update_seconds"] = round(
            result["sb3_learn_seconds"] - result["sb3_collect_seconds"], 3
        )
        result["ratio_vs_sb3"] = round(sps / sb3_sps, 3)
        if same_settings:
            result["ratio_vs_sb3_same_settings"] = round(
                float(result["same_settings_sps"]) / sb3_sps, 3
            )
    return result
