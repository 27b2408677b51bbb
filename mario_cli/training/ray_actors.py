"""IMPALA actors on a Ray cluster: many actor processes (any machines), one learner.

``RayCollector`` has the interface the trainer uses for ``BackgroundCollector``
(``publish``, ``start``, ``next_batch``, ``stop``). Each of ``n_actors`` Ray actors
(``RolloutWorker``) runs its own vector env of ``n_envs`` envs and a copy of the
policy, and returns one rollout (``n_steps x n_envs`` steps) per request, as numpy
arrays. A dispatcher thread in the learner process hands every actor its next request
as soon as its last rollout arrives, carrying a reference to the newest weights
(``ray.put`` once per update); an actor fetches them only when they changed. So per
update the weights cross the network once per actor that collects with them, and
per rollout one ``n_steps x n_envs`` batch comes back (observations as uint8).

An actor that dies (process killed, machine gone) costs only its unfinished rollout:
the loss is reported as an ``ActorEvent``, a new actor takes its slot, and the
learner keeps learning from the others meanwhile.

Ray is imported only here, and only when ``--actors ray`` is used.
"""

from __future__ import annotations

import contextlib
import faulthandler
import itertools
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

from mario_cli import metric_names as names
from mario_cli.config import MarioConfig, ensure_components
from mario_cli.errors import ConfigError, MarioError, first_line
from mario_cli.events import ActorEvent, Event, Notice
from mario_cli.training.rollout import RolloutBatch

INSTALL_HINT = "pip install 'mario-rl[ray]'"
# An actor is one CPU of the cluster, so its envs step in its own process: worker
# processes would use more cores than Ray reserves, and alone they were no faster.
ACTOR_VECTOR_MODE = "sync"
# A slot whose actors die this many times in a row without a rollout stops the run.
MAX_LOSSES_IN_A_ROW = 3
# Without any rollout for this long, the learner says what it is waiting for.
STARVED_SECONDS = 60.0
_POLL_SECONDS = 0.2
_CONNECT_TIMEOUT_SECONDS = 5.0


def import_ray() -> ModuleType:
    """The ray package, or a one-line error saying how to install it."""
    # Ray's C++ core would install abseil's failure handler for SIGTERM in this process,
    # over ours: the run would abort after saving instead of exiting 0.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        import ray
    except ImportError:
        raise MarioError(f"--actors ray needs the ray package: {INSTALL_HINT}") from None
    return ray


# ------------------------------------------------------------------ the connection
class RaySession:
    """This process's use of Ray: joined or started once, shared by every trainer in it.

    ``mario tune --n-jobs 2`` runs two trainers in one process, and a test may have
    connected already: a session reuses a running Ray and shuts down only an instance
    it started itself, when its last user is done. A joined cluster is never shut down.
    """

    _lock = threading.Lock()
    _users = 0
    _local: LocalRay | None = None  # the instance this process started, if any

    def __init__(self, description: str) -> None:
        self.description = description
        self._open = True

    @classmethod
    def open(cls, cfg: MarioConfig, algorithm: Any) -> RaySession:
        """Check that ``cfg`` can use Ray actors, then connect (or start a local Ray)."""
        if not getattr(algorithm, "asynchronous", False):
            raise ConfigError(
                f"--actors ray runs the actors of an asynchronous algorithm; "
                f"{cfg.algo.algo!r} is synchronous: use --algo impala or --actors thread"
            )
        ray = import_ray()
        _enable_faulthandler()
        with cls._lock:
            started = False
            if not ray.is_initialized():
                address = cfg.train.ray_address or os.environ.get("RAY_ADDRESS") or None
                if address is None:
                    cls._local = LocalRay(max(cfg.train.n_actors, os.cpu_count() or 1))
                    started = True
                else:
                    _join(ray, address)
            cls._users += 1
        return cls(_describe(ray, cfg, started))

    def close(self) -> None:
        """Release this session; the last user shuts down a Ray instance we started."""
        if not self._open:
            return
        self._open = False
        cls = type(self)
        with cls._lock:
            cls._users -= 1
            if cls._users == 0 and cls._local is not None:
                cls._local.shutdown()
                cls._local = None


QUIET = {"log_to_driver": False, "logging_level": logging.ERROR}


class LocalRay:
    """A local Ray instance, started and shut down by a thread of its own.

    Ray's processes die with the thread that started them (Linux PR_SET_PDEATHSIG):
    started from a trainer's thread (the TUI's worker, a tune trial), they would be
    killed when that thread ends, under any other trainer still using them.
    """

    def __init__(self, cpus: int) -> None:
        self._ready = threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(cpus,), name="mario-ray")
        self._thread.daemon = True  # at exit, ray's own atexit hook stops the instance
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise MarioError(
                f"could not start a local Ray instance ({first_line(self._error)}); see "
                "/tmp/ray/session_latest/logs, or train with --actors thread"
            )

    def _run(self, cpus: int) -> None:
        ray = import_ray()
        try:
            # Off the main thread, ray.init installs no SIGTERM handler of its own.
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, **QUIET)
        except BaseException as exc:
            self._error = exc
            with contextlib.suppress(Exception):
                ray.shutdown()  # whatever part of it did start
            return
        finally:
            self._ready.set()
        self._done.wait()
        with contextlib.suppress(Exception):
            ray.shutdown()

    def shutdown(self) -> None:
        self._done.set()
        self._thread.join(timeout=60)


def _join(ray: ModuleType, address: str) -> None:
    """ray.init on an existing cluster; a mistake is one ConfigError line."""
    if address != "auto":
        _check_reachable(address)
    with _signal_handlers_kept(), _stderr_silenced():
        try:
            ray.init(address=address, **QUIET)
        except Exception as exc:
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise ConfigError(_join_error(address, exc)) from None


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Drop what Ray's C++ client writes to fd 2 while it retries a refused join.

    Twenty lines of retries would bury the one line that says what to do. Only on
    the main thread (plain and quiet displays): the TUI draws through fd 2.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _enable_faulthandler() -> None:
    """Enable faulthandler on the real stderr before ray.init does it on ``sys.stderr``.

    Under the TUI, ``sys.stderr`` is Textual's capture, whose file descriptor is -1,
    and ray.init fails on it.
    """
    if not faulthandler.is_enabled() and sys.__stderr__ is not None:
        with contextlib.suppress(Exception):
            faulthandler.enable(file=sys.__stderr__, all_threads=False)


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Undo ray.init's SIGTERM handler (it exits at once): our Ctrl-C/SIGTERM saves first."""
    if threading.current_thread() is not threading.main_thread():
        yield  # ray.init installs nothing off the main thread
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    saved = {sig: signal.getsignal(sig) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def _check_reachable(address: str) -> None:
    """Fail in one line now, rather than after Ray's minute of retries."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"--ray-address {address!r} is not HOST:PORT; pass the head node's address, "
            "e.g. --ray-address 10.0.0.5:6379, or leave it out to start a local Ray"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), _CONNECT_TIMEOUT_SECONDS).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"no Ray cluster answers at {address} ({why}); start one there with "
            f"`ray start --head --port {port}`, or leave out --ray-address to start a local Ray"
        ) from None


def _join_error(address: str, exc: Exception) -> str:
    text = first_line(exc)
    chain, cause = [], exc
    while cause is not None and len(chain) < 5:  # ray.init's ConnectionError hides the cause
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    if "authenticat" in " ".join(chain).lower():
        return (
            f"the Ray cluster at {address} uses token authentication and refused to let us "
            "join: export RAY_AUTH_MODE=token, with the head's ~/.ray/auth_token copied here "
            "(or its token in RAY_AUTH_TOKEN), then rerun"
        )
    return (
        f"could not join the Ray cluster at {address} ({text}); check the address "
        "(`ray status` on the head node), or leave out --ray-address to start a local Ray"
    )


def _describe(ray: ModuleType, cfg: MarioConfig, started: bool) -> str:
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        address = ray.get_runtime_context().gcs_address
    except Exception:  # only a description: never fail a run for it
        cpus, nodes, address = cfg.train.n_actors, 1, "?"
    where = (
        f"a local Ray instance ({cpus} CPUs)"
        if started
        else f"the Ray cluster at {address} ({nodes} node{'s' * (nodes != 1)}, {cpus} CPUs)"
    )
    envs = f"{cfg.env.n_envs} env{'s' * (cfg.env.n_envs != 1)}"
    text = (
        f"IMPALA actors: {cfg.train.n_actors} Ray actors x {envs} on {where}; n_envs is per actor"
    )
    if cpus < cfg.train.n_actors:
        text += f"; only {cpus} CPUs for {cfg.train.n_actors} actors: some wait for a CPU"
    return text


# -------------------------------------------------------------------- the actor
class RolloutWorker:
    """The body of one Ray actor: its own vector env and a copy of the policy.

    A plain class (``ray.remote`` wraps it when actors start), so it also runs, and is
    tested, without Ray.
    """

    def __init__(self, config: dict[str, Any], seed: int) -> None:
        from mario_cli.envs import VectorEnv
        from mario_cli.training.builders import build_policy
        from mario_cli.training.collector import Collector
        from mario_cli.training.rollout import RolloutStorage

        torch.set_num_threads(1)
        ensure_components()  # plugin settings tables are part of the config
        cfg = MarioConfig.model_validate(config)
        cpu = torch.device("cpu")
        self.venv = VectorEnv(cfg.env, seed=seed, mode=ACTOR_VECTOR_MODE)
        obs_shape = tuple(self.venv.single_observation_space.shape)
        n_actions = int(self.venv.single_action_space.n)
        # Left in train mode, as the learner's actor thread is: noisy heads explore.
        self.policy, _ = build_policy(cfg, obs_shape, n_actions, cpu)
        self.storage = RolloutStorage(cfg.algo.n_steps, self.venv.num_envs, obs_shape, cpu)
        self.collector = Collector(self.venv, cfg.algo.n_steps, cfg.algo.gamma, cpu)
        self.collector.reset(seed, self.policy, 0)
        self.version: int | None = None

    def rollout(self, weights: list[Any], version: int) -> dict[str, Any]:
        """One rollout with the weights of ``version``; ``weights`` holds their reference.

        The reference travels inside a list so that Ray does not fetch the weights
        for every request, only when the version changed.
        """
        if version != self.version:
            self.load_weights(_fetch(weights[0]), version)
        self.collector.steps_collected = 0  # episode steps relative to the rollout
        start = time.perf_counter()
        batch = self.collector.collect(self.policy, self.storage, lambda: False)
        seconds = time.perf_counter() - start
        return {
            "obs": batch.obs.numpy(),
            "actions": batch.actions.numpy(),
            "log_probs": batch.log_probs.numpy(),
            "values": batch.values.numpy(),
            "rewards": batch.rewards.numpy(),
            "dones": batch.dones.numpy(),
            "starts": batch.starts.numpy(),
            "last_value": batch.last_value.numpy(),
            "last_obs": batch.last_obs.numpy(),
            "initial_state": _to_numpy(batch.initial_state),
            "episodes": batch.episodes,
            "version": version,
            "seconds": seconds,
            "pid": os.getpid(),
            "node": _node_address(),
        }

    def load_weights(self, weights: dict[str, Any], version: int) -> None:
        self.policy.load_state_dict({k: _to_tensor(v, None) for k, v in weights.items()})
        self.version = version


def _fetch(ref: Any) -> Any:
    return import_ray().get(ref)


def _node_address() -> str:
    with contextlib.suppress(Exception):
        return import_ray().util.get_node_ip_address()
    return socket.gethostname()


def state_to_numpy(policy: torch.nn.Module) -> dict[str, Any]:
    """The policy's weights as CPU numpy arrays (tensors where numpy has no dtype)."""
    weights: dict[str, Any] = {}
    for name, value in policy.state_dict().items():
        value = value.detach().cpu()
        weights[name] = value if value.dtype == torch.bfloat16 else value.numpy()
    return weights


def _to_numpy(state: Any) -> Any:
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().numpy()
    return tuple(_to_numpy(s) for s in state)


def _to_tensor(value: Any, device: torch.device | None) -> Any:
    if value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.array(value))  # the store's arrays are read-only
        return tensor if device is None else tensor.to(device)
    return tuple(_to_tensor(v, device) for v in value)


def batch_from_rollout(result: dict[str, Any], device: torch.device) -> RolloutBatch:
    """A RolloutBatch on the learner's device from an actor's numpy rollout."""
    return RolloutBatch(
        obs=_to_tensor(result["obs"], device),
        actions=_to_tensor(result["actions"], device),
        log_probs=_to_tensor(result["log_probs"], device),
        values=_to_tensor(result["values"], device),
        rewards=_to_tensor(result["rewards"], device),
        dones=_to_tensor(result["dones"], device),
        last_value=_to_tensor(result["last_value"], device),
        last_obs=_to_tensor(result["last_obs"], device),
        initial_state=_to_tensor(result["initial_state"], device),
        starts=_to_tensor(result["starts"], device),
        policy_version=int(result["version"]),
        episodes=list(result["episodes"]),
    )


# ------------------------------------------------------------------ the learner side
@dataclass
class _Slot:
    """One actor position; a replacement actor takes the same slot (and env indices)."""

    index: int
    actor: Any = None
    pending: Any = None  # the ObjectRef of the rollout in flight
    seed: int = 0
    ready: bool = False  # delivered a rollout since it started
    losses: int = 0  # actors lost in a row without a rollout
    pid: int | None = None
    node: str | None = None
    fps: float = 0.0
    replacing: bool = False


class RayCollector:
    """Rollouts from ``n_actors`` Ray actors, handed to the learner in arrival order."""

    def __init__(
        self,
        cfg: MarioConfig,
        backbone: str,
        device: torch.device,
        start_step: int,
        should_stop: Callable[[], bool],
        emit: Callable[[Event], None],
    ) -> None:
        self.ray = import_ray()
        self.device = device
        self.should_stop = should_stop
        self.emit = emit
        self.n_envs = cfg.env.n_envs
        self.rollout_size = cfg.algo.n_steps * cfg.env.n_envs
        self._config = _actor_config(cfg, backbone)
        self._seeds = itertools.count(cfg.train.seed, 10_000)  # distinct envs per actor
        self._slots = [_Slot(i) for i in range(cfg.train.n_actors)]
        self._step = start_step
        self._lost = 0
        self._weights: tuple[list[Any], int] | None = None
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._queue: queue.Queue[tuple[_Slot, RolloutBatch]] = queue.Queue(maxsize=1)
        self._halt = threading.Event()
        self._error: BaseException | None = None
        self._waiting_since: float | None = None
        self._said_starved = False
        self._remote = self.ray.remote(RolloutWorker).options(
            num_cpus=1, max_restarts=0, scheduling_strategy="SPREAD"
        )
        self._thread = threading.Thread(target=self._run, name="mario-ray-actors", daemon=True)

    # The trainer's interface --------------------------------------------------
    def publish(self, learner: torch.nn.Module, version: int) -> None:
        """Put the learner's weights in the object store; the next requests carry them."""
        ref = self.ray.put(state_to_numpy(learner))
        with self._lock:
            self._weights = ([ref], version)

    def start(self) -> None:
        self._thread.start()

    def next_batch(self) -> RolloutBatch | None:
        """The next rollout from any actor; None once a stop was requested."""
        while True:
            self._flush_events()
            if self._error is not None:
                raise self._error
            try:
                slot, batch = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self.should_stop() or not self._thread.is_alive():
                    self._flush_events()
                    if self._error is not None:
                        raise self._error from None
                    return None
                self._check_starved()
                continue
            self._waiting_since = None
            self._said_starved = False
            base = slot.index * self.n_envs
            batch.episodes = [
                (self._step + offset, base + env, episode)
                for offset, env, episode in batch.episodes
            ]
            self._step += self.rollout_size
            return batch

    def metrics(self) -> dict[str, float]:
        """``actors/*``: actors delivering rollouts, actors lost so far, steps/s of each."""
        with self._lock:
            metrics = {
                names.ACTORS_COUNT: float(sum(slot.ready for slot in self._slots)),
                names.ACTORS_LOST: float(self._lost),
            }
            for slot in self._slots:
                if slot.ready:
                    metrics[names.ACTORS_FPS.format(slot.index)] = slot.fps
        return metrics

    def stop(self) -> None:
        """Stop dispatching and kill our actors (the cluster itself stays up)."""
        self._halt.set()
        with contextlib.suppress(queue.Empty):
            self._queue.get_nowait()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        for slot in self._slots:
            self._kill(slot)
        self._flush_events()

    # The dispatcher thread ----------------------------------------------------
    def _stopping(self) -> bool:
        return self._halt.is_set() or self.should_stop()

    def _run(self) -> None:
        try:
            for slot in self._slots:
                self._launch(slot)
            while not self._stopping():
                by_ref = {slot.pending: slot for slot in self._slots if slot.pending is not None}
                ready, _ = self.ray.wait(list(by_ref), num_returns=1, timeout=_POLL_SECONDS)
                if not ready:
                    continue
                slot = by_ref[ready[0]]
                slot.pending = None
                try:
                    result = self.ray.get(ready[0])
                except self.ray.exceptions.RayError as exc:
                    if self._stopping():
                        return
                    self._lose(slot, exc)
                    self._launch(slot)
                    continue
                self._submit(slot)  # at once: the actor collects while we hand this over
                self._received(slot, result)
                batch = batch_from_rollout(result, self.device)
                while not self._stopping():
                    try:
                        self._queue.put((slot, batch), timeout=_POLL_SECONDS)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the learner thread, which raises it
            self._error = exc

    def _launch(self, slot: _Slot) -> None:
        slot.seed = next(self._seeds)
        slot.actor = self._remote.remote(self._config, slot.seed)
        slot.ready = False
        self._submit(slot)

    def _submit(self, slot: _Slot) -> None:
        with self._lock:
            weights, version = self._weights
        slot.pending = slot.actor.rollout.remote(weights, version)

    def _received(self, slot: _Slot, result: dict[str, Any]) -> None:
        with self._lock:
            first = not slot.ready
            slot.ready, slot.losses = True, 0
            slot.pid, slot.node = int(result["pid"]), str(result["node"])
            slot.fps = self.rollout_size / max(float(result["seconds"]), 1e-9)
        if first:
            kind = "replaced" if slot.replacing else "started"
            slot.replacing = False
            verb = "replacement is collecting" if kind == "replaced" else "is collecting"
            self._queue_event(slot, kind, f"Ray actor {slot.index} {verb}", "")

    def _lose(self, slot: _Slot, exc: BaseException) -> None:
        reason = _loss_reason(exc)
        self._kill(slot)
        with self._lock:
            was_ready = slot.ready
            slot.ready = False
            slot.losses += 1
            self._lost += 1
        if getattr(exc, "actor_init_failed", False):
            raise MarioError(f"Ray actor {slot.index} could not start: {reason}")
        if slot.losses >= MAX_LOSSES_IN_A_ROW:
            raise MarioError(
                f"Ray actor {slot.index} was lost {slot.losses} times in a row before "
                f"finishing a rollout (last: {reason}); see the Ray logs "
                "(/tmp/ray/session_latest/logs) or train with --actors thread"
            )
        slot.replacing = True
        lost = "its unfinished rollout is dropped" if was_ready else "it had sent nothing yet"
        message = f"Ray actor {slot.index} lost ({reason}); {lost}, starting a new one"
        self._queue_event(slot, "lost", message, reason)

    def _kill(self, slot: _Slot) -> None:
        if slot.actor is not None:
            with contextlib.suppress(Exception):
                self.ray.kill(slot.actor, no_restart=True)
            slot.actor = None
            slot.pending = None

    def _queue_event(self, slot: _Slot, kind: str, message: str, reason: str) -> None:
        where = f" (pid {slot.pid} on {slot.node})" if slot.pid is not None else ""
        event = ActorEvent(
            message=message + where,
            step=self._step,
            actor=slot.index,
            kind=kind,
            pid=slot.pid,
            node=slot.node,
            reason=reason,
        )
        with self._lock:
            self._events.append(event)

    # The learner thread's housekeeping ----------------------------------------
    def _flush_events(self) -> None:
        with self._lock:
            events, self._events = self._events, []
        for event in events:
            self.emit(event)

    def _check_starved(self) -> None:
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        elif not self._said_starved and now - self._waiting_since > STARVED_SECONDS:
            self._said_starved = True
            free = self.ray.available_resources().get("CPU", 0)
            self.emit(
                Notice(
                    f"no rollout from the Ray actors for {STARVED_SECONDS:.0f} s "
                    f"({free:g} CPUs free in the cluster); each actor needs one CPU: "
                    "check `ray status`, or lower --n-actors"
                )
            )


def _actor_config(cfg: MarioConfig, backbone: str) -> dict[str, Any]:
    """What an actor builds from: the run's config with the learner's resolved choices."""
    config = cfg.to_dict()
    config["model"]["backbone"] = backbone  # "auto" could pick another on the actor's device
    config["env"]["vector_mode"] = ACTOR_VECTOR_MODE
    config["train"]["device"] = "cpu"
    return config


def _loss_reason(exc: BaseException) -> str:
    """A short why: Ray's 'The actor is dead because ...' line, or the error's last line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {first_line(cause)}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("The actor is dead because"):
            why = line.removeprefix("The actor is dead because").strip()
            return _clip(why.split(". ")[0].rstrip("."))  # "its worker process has died"
    return _clip(lines[-1] if lines else type(exc).__name__)


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
