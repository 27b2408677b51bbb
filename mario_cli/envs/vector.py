"""N Mario envs stepped as one batch, in worker processes or in-process.

Each worker process hosts several envs (so 8 or 16 envs run well on 2 cores) and
writes observations straight into one shared-memory array; only rewards, flags and
small info dicts travel through the pipes. Episodes reset automatically in the same
step: the returned observation is the new episode's first, and the finished
episode's last observation is in ``info["final_obs"]``. An env whose reset info has
``"greedy": True`` asks that its episode be played by argmax (a training probe);
after an automatic reset that request arrives as the step info's ``"next_greedy"``.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing import connection as mp_connection
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from mario_cli.config import EnvConfig
from mario_cli.errors import EnvWorkerError

# How long to wait on a worker before checking that its process is still alive.
_POLL_SECONDS = 1.0
# How often the parent looks at its stop request while the workers play a rollout.
_STOP_POLL_SECONDS = 0.05
# A worker that builds its envs slower than this is considered hung.
_START_TIMEOUT_SECONDS = 300.0
# After answering a lockstep step, a worker polls its pipe this long before blocking
# on it. A vCPU that halts takes ~0.4 ms to wake on a VM, twice per lockstep step,
# while the parent's next command usually comes within a millisecond (measured on 2
# vCPUs: `mario bench env` scaling 1.26-1.54 blocking at once, 1.51-1.80 polling 1 ms).
# Not after a group step: there the next group's command is queued already for
# ~75% of commands, and for most others the parent is busy choosing actions on the
# core a polling worker takes (training, counted in the workers: 4% of commands
# came while polling, 24% after a whole wasted 1 ms of it: ~2.4% of all CPU time).
_SPIN_SECONDS = 0.001


def worker_spin_seconds(n_workers: int, cores: int) -> float:
    """How long each worker polls before blocking: only while every worker has a core,
    since with more workers than cores one's polling takes the CPU another needs."""
    return _SPIN_SECONDS if n_workers <= cores else 0.0


class EnvGroup:
    """Several envs stepped one after another; the body of a worker and of sync mode."""

    def __init__(self, cfg: EnvConfig, indices: list[int], seed: int | None) -> None:
        from mario_cli.envs.factory import make_env

        self.indices = indices
        self.seed = seed
        self.envs = [make_env(cfg) for _ in indices]

    @property
    def spaces(self) -> tuple[Any, Any]:
        return self.envs[0].observation_space, self.envs[0].action_space

    def reset(self, out: np.ndarray, seed: int | None) -> list[dict[str, Any]]:
        infos = []
        for index, env in zip(self.indices, self.envs, strict=True):
            env_seed = None if seed is None else seed + index
            if env_seed is not None:
                env.action_space.seed(env_seed)
            obs, info = env.reset(seed=env_seed)
            out[index] = obs
            infos.append(info)
        return infos

    def step(
        self, actions: np.ndarray, out: np.ndarray, only: tuple[int, int] | None = None
    ) -> tuple[list[Any], ...]:
        """Step every env, or those with ``only[0] <= index < only[1]``."""
        rewards, terminated, truncated, infos = [], [], [], []
        for index, env in zip(self.indices, self.envs, strict=True):
            if only is not None and not only[0] <= index < only[1]:
                continue
            try:
                obs, reward, term, trunc, info = env.step(int(actions[index]))
            except Exception as exc:
                raise _EnvStepError(index, exc) from exc
            if term or trunc:
                info["final_obs"] = obs
                obs, reset_info = env.reset()
                if reset_info.get("greedy"):
                    info["next_greedy"] = True
            out[index] = obs
            rewards.append(reward)
            terminated.append(term)
            truncated.append(trunc)
            infos.append(info)
        return rewards, terminated, truncated, infos

    def close(self) -> None:
        for env in self.envs:
            env.close()


class _ActorError(Exception):
    """The worker's actor (its policy copy) failed, not its envs."""


class _EnvStepError(Exception):
    def __init__(self, index: int, exc: Exception) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.index = index


def poll_seconds_after(command: str | None, spin_seconds: float) -> float:
    """How long a worker polls for its next command after answering ``command``."""
    return spin_seconds if command == "step" else 0.0


def _worker_main(
    conn: Connection,
    cfg: EnvConfig,
    indices: list[int],
    seed: int | None,
    n_envs: int,
    spin_seconds: float = 0.0,
) -> None:
    # Env workers do no linear algebra: one thread each, so they don't fight the learner.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what
    # to do (save, then close us), so workers must not die on it mid-step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shm = None
    group = None
    actor = None  # attached by VectorEnv.attach_actors: plays whole rollouts here
    try:
        group = EnvGroup(cfg, indices, seed)
        conn.send(("ready", group.spaces))
        command, shm_name = conn.recv()
        shm = SharedMemory(name=shm_name)
        obs_space = group.spaces[0]
        out = np.ndarray((n_envs, *obs_space.shape), dtype=obs_space.dtype, buffer=shm.buf)
        command = None
        while True:
            command, data = _next_command(conn, poll_seconds_after(command, spin_seconds))
            if command == "step":
                started = time.perf_counter()
                results = group.step(data, out)
                conn.send(("ok", (results, time.perf_counter() - started)))
            elif command == "step_group":
                actions, only = data
                conn.send(("ok", group.step(actions, out, only)))
            elif command == "reset":
                infos = group.reset(out, data)
                if actor is not None:
                    actor.on_reset(infos)
                conn.send(("ok", infos))
            elif command in ("actor", "rollout"):
                try:
                    if command == "actor":
                        make_actor, setup, worker = data
                        actor = make_actor(setup, indices, worker)
                        conn.send(("ok", None))
                    else:
                        conn.send(("ok", actor.play(group, out, data)))
                except _EnvStepError:
                    raise
                except Exception as exc:
                    raise _ActorError(
                        f"its policy copy failed: {type(exc).__name__}: {exc}"
                    ) from exc
            elif command == "close":
                conn.send(("ok", None))
                break
    except KeyboardInterrupt:
        pass  # the parent handles Ctrl-C and closes us
    except _EnvStepError as exc:
        _send_quietly(conn, ("error", (exc.index, str(exc))))
    except _ActorError as exc:
        _send_quietly(conn, ("actor_error", (None, str(exc) + "\n" + traceback.format_exc())))
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        _send_quietly(conn, ("error", (indices[0], detail + "\n" + traceback.format_exc())))
    finally:
        if actor is not None:
            actor.close()
        if group is not None:
            group.close()
        if shm is not None:
            shm.close()


def _next_command(conn: Connection, spin_seconds: float) -> Any:
    """The next message on ``conn``: polled for up to ``spin_seconds``, then waited for."""
    deadline = time.perf_counter() + spin_seconds
    while not conn.poll(0) and time.perf_counter() < deadline:
        pass
    return conn.recv()


def _send_quietly(conn: Connection, message: Any) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        conn.send(message)


def _in_env_order(by_worker: list[tuple[list[Any], list[int]]]) -> list[Any]:
    """Per-worker lists (each in its envs' order) as one list in env index order."""
    pairs = sorted(
        (index, item)
        for items, indices in by_worker
        for index, item in zip(indices, items, strict=True)
    )
    return [item for _, item in pairs]


def _results_in_env_order(
    by_worker: list[tuple[tuple[list[Any], ...], list[int]]],
) -> tuple[list[Any], ...]:
    """Workers' (rewards, terminated, truncated, infos) merged in env index order."""
    return tuple(
        _in_env_order([(result[field], indices) for result, indices in by_worker])
        for field in range(4)
    )


def _stacked(
    results: tuple[list[Any], ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    rewards, terminated, truncated, infos = results
    return (
        np.array(rewards, dtype=np.float32),
        np.array(terminated, dtype=bool),
        np.array(truncated, dtype=bool),
        list(infos),
    )


def worker_context() -> mp.context.BaseContext:
    """How mario starts worker processes: forkserver where there is one, else spawn.

    Never plain fork: the TUI and the learner run threads in this process. The fork
    server imports the emulator and torch once, before it forks any worker, so a worker
    starts without importing them again (a training's envs and policy copies ready in
    ~1.1 s instead of ~2.2 s here).
    """
    methods = mp.get_all_start_methods()
    if "forkserver" not in methods:
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_WORKER_MODULES)  # no effect once the server runs
    return ctx


# What worker processes import: the env stack, and torch for the workers' policy copies.
_WORKER_MODULES = ["mario_cli.envs.factory", "mario_cli.training.worker_acting"]


def default_worker_count(n_envs: int) -> int:
    return max(1, min(n_envs, os.cpu_count() or 1))


def group_spans(n_envs: int, n_workers: int, n_groups: int) -> list[tuple[int, int]]:
    """Env index ranges [low, high) of ``n_groups`` groups over ``n_workers`` workers."""
    # A group needs an env in every worker, or stepping it leaves a worker idle.
    n_groups = max(1, min(n_groups, n_envs // n_workers))
    bounds = np.linspace(0, n_envs, n_groups + 1).astype(int)
    return [(int(low), int(high)) for low, high in itertools.pairwise(bounds)]


def worker_envs(n_envs: int, n_workers: int, n_groups: int) -> list[list[int]]:
    """Each worker's env indices: every group is spread over every worker, so stepping
    one group keeps them all busy."""
    groups = group_spans(n_envs, n_workers, n_groups)
    shares = [np.array_split(np.arange(low, high), n_workers) for low, high in groups]
    return [[int(i) for share in shares for i in share[w]] for w in range(n_workers)]


def acting_batch(cfg: EnvConfig, recurrent: bool, workers_act: bool = False) -> int:
    """How many envs the policy acts on per call: with the workers acting, the most
    envs one worker has; else the collector's largest group, or every env for a
    recurrent policy or in sync mode (one group)."""
    if recurrent or cfg.vector_mode == "sync":
        return cfg.n_envs
    workers = min(cfg.n_workers or default_worker_count(cfg.n_envs), cfg.n_envs)
    if workers_act:
        return max(len(envs) for envs in worker_envs(cfg.n_envs, workers, cfg.step_groups))
    return max(high - low for low, high in group_spans(cfg.n_envs, workers, cfg.step_groups))


class VectorEnv:
    """``n_envs`` copies of the configured env, batched.

    ``mode="process"`` spreads the envs over ``n_workers`` processes (0: one per
    core); ``mode="sync"`` steps them in this process, for debugging. Both give the
    same results for the same seed and actions.

    ``n_groups`` splits the envs into that many contiguous groups, each spread over
    all workers, that can be stepped in turn (``step_async`` / ``step_wait``): while
    the workers step one group, the caller picks the next group's actions, so
    neither the workers nor the policy wait for each other (double buffering, as in
    sample-factory). Each group needs an env in every worker, so there are at most
    ``n_envs // n_workers`` groups, and one in sync mode. ``step`` steps every env.
    """

    def __init__(
        self,
        cfg: EnvConfig,
        n_envs: int | None = None,
        seed: int | None = None,
        mode: str | None = None,
        n_workers: int | None = None,
        n_groups: int = 1,
    ) -> None:
        self.cfg = cfg
        self.num_envs = n_envs or cfg.n_envs
        if n_groups < 1:
            raise ValueError("n_groups must be >= 1")
        # Env index ranges [low, high) of the groups; one group until workers exist.
        self.groups: list[tuple[int, int]] = [(0, self.num_envs)]
        self._pending: list[deque[tuple[int, int]]] = []
        self._sync_results: dict[tuple[int, int], tuple[list[Any], ...]] = {}
        self.seed = seed
        self.mode = mode or cfg.vector_mode
        self.env_id = cfg.env_id
        self._closed = False
        self._group: EnvGroup | None = None
        self._workers: list[tuple[mp.process.BaseProcess, Connection, list[int]]] = []
        self._shm: SharedMemory | None = None
        # Seconds each worker spent stepping its envs in `step` (lockstep), the pipes'
        # round trips and the wait for the other workers left out: `mario bench env`
        # splits its scaling into the emulators' speed side by side and that wait.
        self.lockstep_seconds: list[float] = []
        if self.mode == "sync":
            self._group = EnvGroup(cfg, list(range(self.num_envs)), seed)
            self.single_observation_space, self.single_action_space = self._group.spaces
            self._obs = np.zeros(
                (self.num_envs, *self.single_observation_space.shape), dtype=np.uint8
            )
        else:
            from mario_cli.envs.factory import check_env_config

            check_env_config(cfg)  # a config mistake is a ConfigError, not a worker crash
            workers = n_workers if n_workers else (cfg.n_workers or None)
            self._start_workers(
                min(workers or default_worker_count(self.num_envs), self.num_envs), n_groups
            )
        self._needs_reset = True

    @property
    def n_workers(self) -> int:
        return len(self._workers) if self._workers else 0

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the env workers (none in sync mode)."""
        return [proc.pid for proc, _, _ in self._workers or [] if proc.pid is not None]

    def _start_workers(self, n_workers: int, n_groups: int) -> None:
        ctx = worker_context()
        self.groups = group_spans(self.num_envs, n_workers, n_groups)
        spin = worker_spin_seconds(n_workers, os.cpu_count() or 1)
        try:
            for indices in worker_envs(self.num_envs, n_workers, n_groups):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker_main,
                    args=(child, self.cfg, indices, self.seed, self.num_envs, spin),
                    daemon=True,
                )
                proc.start()
                child.close()
                self._workers.append((proc, parent, indices))
                self._pending.append(deque())
                self.lockstep_seconds.append(0.0)
            spaces = [self._receive(w, timeout=_START_TIMEOUT_SECONDS) for w in range(n_workers)]
            self.single_observation_space, self.single_action_space = spaces[0]
            obs_space = self.single_observation_space
            nbytes = int(np.prod(obs_space.shape)) * self.num_envs
            self._shm = SharedMemory(create=True, size=max(1, nbytes))
            self._obs = np.ndarray(
                (self.num_envs, *obs_space.shape), dtype=np.uint8, buffer=self._shm.buf
            )
            for _, conn, _ in self._workers:
                conn.send(("attach", self._shm.name))
        except BaseException:
            self.close(force=True)
            raise

    def _send(self, worker: int, message: Any) -> None:
        proc, conn, _indices = self._workers[worker]
        try:
            conn.send(message)
        except OSError:  # BrokenPipeError and friends: the worker died between two steps
            proc.join(1.0)
            self._raise_worker_error(worker, f"exited with code {proc.exitcode}")

    def _receive(self, worker: int, timeout: float | None = None) -> Any:
        proc, conn, _indices = self._workers[worker]
        waited = 0.0
        while not conn.poll(_POLL_SECONDS):
            waited += _POLL_SECONDS
            if not proc.is_alive():
                self._raise_worker_error(worker, f"exited with code {proc.exitcode}")
            if timeout is not None and waited >= timeout:
                self._raise_worker_error(worker, f"did not answer within {timeout:.0f}s")
        try:
            status, payload = conn.recv()
        except (EOFError, OSError):
            proc.join(1.0)
            self._raise_worker_error(worker, f"exited with code {proc.exitcode}")
        if status == "error":
            index, detail = payload
            self._raise_worker_error(worker, detail, index)
        if status == "actor_error":
            _, detail = payload
            self._raise_worker_error(worker, detail, rerun="--acting trainer")
        return payload

    def _raise_worker_error(
        self,
        worker: int,
        detail: str,
        index: int | None = None,
        rerun: str = "--vector-mode sync",
    ) -> None:
        indices = self._workers[worker][2]
        contiguous = indices == list(range(indices[0], indices[-1] + 1))
        envs = f"{indices[0]}-{indices[-1]}" if contiguous else ", ".join(map(str, indices))
        which = f"env {index}" if index is not None else f"envs {envs}"
        first_line = detail.strip().splitlines()[0] if detail.strip() else "no detail"
        self.close(force=True)
        raise EnvWorkerError(
            f"env worker {worker} ({which}, {self.env_id}) failed: {first_line}; "
            f"rerun with {rerun} --debug to see the traceback"
        )

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        seed = self.seed if seed is None and self._needs_reset else seed
        self._needs_reset = False
        if self._group is not None:
            infos = self._group.reset(self._obs, seed)
        else:
            for worker in range(len(self._workers)):
                self._send(worker, ("reset", seed))
            infos = _in_env_order(
                [(self._receive(w), ix) for w, (_, _, ix) in enumerate(self._workers)]
            )
        return self._obs.copy(), infos

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        actions = np.asarray(actions)
        if self._group is not None:
            results = self._group.step(actions, self._obs)
        else:
            for worker in range(len(self._workers)):
                self._send(worker, ("step", actions))
            by_worker = []
            for worker, (_, _, indices) in enumerate(self._workers):
                result, seconds = self._receive(worker)
                self.lockstep_seconds[worker] += seconds
                by_worker.append((result, indices))
            results = _results_in_env_order(by_worker)
        return self._obs.copy(), *_stacked(results)

    def step_async(self, span: tuple[int, int], actions: np.ndarray) -> None:
        """Start stepping envs ``span[0] <= i < span[1]`` (a group, or all) with ``actions``."""
        low, high = span
        actions = np.asarray(actions)
        if not 0 <= low < high <= self.num_envs or actions.shape[0] != high - low:
            raise ValueError(f"envs {low}..{high - 1}: got {actions.shape[0]} actions")
        full = np.zeros(self.num_envs, dtype=actions.dtype)
        full[low:high] = actions
        if self._group is not None:
            self._sync_results[span] = self._group.step(full, self._obs, span)
            return
        for worker, (_, _, indices) in enumerate(self._workers):
            if any(low <= i < high for i in indices):
                self._send(worker, ("step_group", (full, span)))
                self._pending[worker].append(span)

    def step_wait(
        self, span: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """The results of ``step_async(span, ...)``, in env order; wait in the order sent."""
        low, high = span
        if self._group is not None:
            if span not in self._sync_results:
                raise RuntimeError(f"step_wait({span}) without step_async({span})")
            results = self._sync_results.pop(span)
        else:
            by_worker = []
            for worker, pending in enumerate(self._pending):
                if pending and pending[0] == span:
                    pending.popleft()
                    indices = [i for i in self._workers[worker][2] if low <= i < high]
                    by_worker.append((self._receive(worker), indices))
                elif span in pending:
                    raise RuntimeError(f"step_wait({span}) before the results sent earlier")
            if not by_worker:
                raise RuntimeError(f"step_wait({span}) without step_async({span})")
            results = _results_in_env_order(by_worker)
        return self._obs[low:high].copy(), *_stacked(results)

    def attach_actors(self, make_actor: Callable[..., Any], setup: Any) -> None:
        """Give every worker an actor, ``make_actor(setup, env indices, worker index)``,
        that plays whole rollouts of its envs there (:meth:`play_rollout`).

        The actor has ``on_reset(infos)``, called after each reset of its envs,
        ``play(group, observations, arg)`` and ``close()``. Process mode only.
        """
        if self._group is not None:
            raise ValueError("actors play in env workers: use mode='process'")
        for worker in range(len(self._workers)):
            self._send(worker, ("actor", (make_actor, setup, worker)))
        for worker in range(len(self._workers)):
            self._receive(worker, timeout=_START_TIMEOUT_SECONDS)

    def play_rollout(
        self, arg: Any, should_stop: Callable[[], bool], stop_flag: np.ndarray
    ) -> list[Any] | None:
        """Every worker's actor plays a rollout (``play(group, obs, arg)``, a dict);
        their results in worker order, or None if ``should_stop()`` turned true first
        (then ``stop_flag[0]`` is set, which the actors check at every step, and each
        answers ``{"stopped": True, ...}``)."""
        for worker in range(len(self._workers)):
            self._send(worker, ("rollout", arg))
        results: list[Any] = [None] * len(self._workers)
        waiting = {conn: worker for worker, (_, conn, _) in enumerate(self._workers)}
        stopped = False
        try:
            while waiting:
                if not stopped and should_stop():
                    stop_flag[0] = 1
                    stopped = True
                for conn in mp_connection.wait(list(waiting), timeout=_STOP_POLL_SECONDS):
                    worker = waiting.pop(conn)
                    results[worker] = self._receive(worker)
        except BaseException:  # e.g. Ctrl-C outside the CLI: the workers stop at their next step
            stop_flag[0] = 1
            raise
        if stopped or any(result.get("stopped") for result in results):
            return None
        return results

    def current_obs(self) -> np.ndarray:
        """Every env's current observation (a copy)."""
        return self._obs.copy()

    def close(self, force: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if self._group is not None:
            self._group.close()
        for proc, conn, _ in self._workers:
            if not force and proc.is_alive():
                try:
                    conn.send(("close", None))
                    if conn.poll(5.0):
                        conn.recv()
                except (BrokenPipeError, EOFError, OSError):
                    pass
            proc.join(timeout=0 if force else 5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
            conn.close()
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close(force=True)
