"""The training loop: collect a rollout, update, report events, checkpoint.

The trainer knows nothing of the UI: it emits events to sinks and reads requests
(pause, save now, stop) from a ``TrainingControl``, so the same loop runs under the
plain console, the TUI, ``mario tune`` and the tests.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mario_cli import __version__
from mario_cli import metric_names as names
from mario_cli.config import MarioConfig, to_toml
from mario_cli.diagnostics import HintEngine
from mario_cli.envs import VectorEnv
from mario_cli.envs.stages import action_names
from mario_cli.errors import CheckpointError, ConfigError, MarioError, NonFiniteLossError
from mario_cli.events import (
    CheckpointSaved,
    Episode,
    EpisodeEnd,
    Event,
    Hint,
    IterationStats,
    Notice,
    RunFinished,
    RunStarted,
)
from mario_cli.plugins import get_host
from mario_cli.runs import RunPaths, create_run, default_run_name, mark_latest
from mario_cli.sinks.jsonl import JsonlSink
from mario_cli.training.best_check import GreedyBestCheck
from mario_cli.training.builders import build_algorithm, build_policy, replay_name
from mario_cli.training.checkpoint import (
    GREEDY_BEST,
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
)
from mario_cli.training.collector import BackgroundCollector, Collector
from mario_cli.training.device import (
    CompileGuard,
    amp_settings,
    configure_threads,
    cpu_has_native_bf16,
    keep_freed_memory,
    resolve_device,
    seed_everything,
    should_compile,
)
from mario_cli.training.optim import GradientStepper
from mario_cli.training.repair import PathRepair
from mario_cli.training.rollout import RolloutBatch, RolloutStorage
from mario_cli.training.worker_acting import WorkerCollector, shared_bytes, shared_memory_free

if TYPE_CHECKING:
    from mario_cli.training.ray_actors import RayCollector, RaySession

Sink = Callable[[Event], None]
# Worker acting needs its shared memory with this much to spare (the obs and other
# processes use /dev/shm too); a worker writing past what is there dies of SIGBUS.
_SHM_HEADROOM = 1.5
EPISODE_WINDOW = 100  # rolling window of the rollout/* means, as in Stable-Baselines3


def acting_in_workers(
    cfg: MarioConfig,
    device: torch.device,
    policy: torch.nn.Module,
    algorithm: Any,
    obs_shape: tuple[int, ...],
    note: Callable[[str], None] = lambda _message: None,
) -> bool:
    """Whether each env worker chooses its envs' actions (``train.acting``).

    Auto: yes for synchronous training of a feed-forward policy on CPU with worker
    processes, where the trainer acting for them leaves cores idle; CUDA batches the
    acting better in the trainer, and recurrent or asynchronous collection needs it.
    """
    if cfg.train.acting == "trainer":
        return False
    needed = shared_bytes(policy, cfg.algo.n_steps, cfg.env.n_envs, obs_shape)
    free = shared_memory_free()
    shm = (
        f"{needed / 2**20:.0f} MiB of shared memory for the rollout and the weights "
        f"(/dev/shm has {(free or 0) / 2**20:.0f} MiB free; in a container, --shm-size)"
    )
    shm_short = free is not None and free < needed * _SHM_HEADROOM
    reasons = [
        reason
        for reason, applies in (
            (f"a CPU device (this run uses {device.type})", device.type != "cpu"),
            ("--vector-mode process", cfg.env.vector_mode != "process"),
            ("a feed-forward policy (--recurrent none)", policy.recurrent),
            ("local actors (not --actors ray)", cfg.train.actors == "ray"),
            (
                "synchronous collection (not IMPALA, not --overlap-collection)",
                getattr(algorithm, "asynchronous", False) or cfg.algo.overlap_collection,
            ),
            (
                "installed plugins (ones registered in this process do not reach the workers)",
                get_host().in_process_only,
            ),
            (shm, shm_short),
        )
        if applies
    ]
    if cfg.train.acting == "workers" and reasons:
        raise ConfigError(
            f"--acting workers needs {reasons[0]}; use --acting auto or --acting trainer"
        )
    if reasons == [shm]:  # the one case where auto gives up the faster collection
        note(f"the trainer acts for the env workers: acting in them needs {shm}")
    return not reasons


def stage_start_episodes(episodes: Iterable[Episode]) -> list[Episode]:
    """The sampled episodes that began at the stage start (not restarts, not probes)."""
    return [e for e in episodes if e.sampled_from_start]


def rollout_metrics(episodes: list[Episode], restarts: bool = False) -> dict[str, float]:
    """The ``rollout/*`` means over the episode window.

    Return, length, max x and clear rate come from stage-start episodes only: a
    restart episode begins part-way into the stage. With ``restarts`` on, also the
    window's share of restart episodes and its frontier (the furthest max x of any
    episode); with greedy probes in the window, their clear rate and mean max x
    (training's view of what ``mario eval`` will see: argmax after eval's no-op start).
    """
    metrics: dict[str, float] = {}
    starts = stage_start_episodes(episodes)
    if starts:
        metrics[names.ROLLOUT_EP_REW_MEAN] = float(np.mean([e.episode_return for e in starts]))
        metrics[names.ROLLOUT_EP_LEN_MEAN] = float(np.mean([e.length for e in starts]))
        metrics[names.ROLLOUT_AVG_MAX_X_POS] = float(np.mean([e.max_x_pos for e in starts]))
        metrics[names.ROLLOUT_CLEAR_RATE] = float(np.mean([e.cleared for e in starts]))
    if restarts and episodes:
        metrics[names.ROLLOUT_RESTART_SHARE] = sum(e.restart for e in episodes) / len(episodes)
        metrics[names.ROLLOUT_FRONTIER_X] = float(max(e.max_x_pos for e in episodes))
    probes = [e for e in episodes if e.greedy]
    if probes:
        metrics[names.ROLLOUT_GREEDY_CLEAR_RATE] = float(np.mean([e.cleared for e in probes]))
        metrics[names.ROLLOUT_GREEDY_MAX_X_POS] = float(np.mean([e.max_x_pos for e in probes]))
    return metrics


class TrainingControl:
    """Requests from outside the loop (keys, signals, tune's pruner), thread-safe."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._save = threading.Event()
        self._paused = threading.Event()
        self.stop_reason = ""

    def request_stop(self, reason: str = "stopped by request") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_save(self) -> None:
        self._save.set()

    def take_save_request(self) -> bool:
        requested = self._save.is_set()
        self._save.clear()
        return requested

    def toggle_pause(self) -> bool:
        if self._paused.is_set():
            self._paused.clear()
        else:
            self._paused.set()
        return self._paused.is_set()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def wait_while_paused(self) -> None:
        while self._paused.is_set() and not self._stop.is_set():
            time.sleep(0.1)


class PhaseTimer:
    """Wall-clock seconds spent per phase of the loop (for `mario bench train`), and
    this process's CPU seconds (all its threads) in the once-per-iteration phases."""

    PHASES = ("env_wait", "inference", "storing", "update", "repair", "best", "logging")
    # Reading the process's CPU time took ~0.2 ms on the 2-vCPU host while the env
    # workers ran: around every collection phase (four per agent step of each group)
    # that was 5% of the loop. Collection's CPU is what the other phases leave.
    CPU_PHASES = ("update", "repair", "best", "logging")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.cpu_seconds = dict.fromkeys(self.CPU_PHASES, 0.0)
        self._open: str | None = None
        self.owner: int | None = None  # the learner's thread; an actor thread's time overlaps

    @contextlib.contextmanager
    def __call__(self, phase: str):
        # Nested (a save inside logging): the outer one counts. Other threads: not counted.
        if self._open is not None or threading.get_ident() != self.owner:
            yield
            return
        self._open = phase
        cpu = time.process_time() if phase in self.cpu_seconds else 0.0
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start
            if phase in self.cpu_seconds:
                self.cpu_seconds[phase] += time.process_time() - cpu
            self._open = None


class Trainer:
    """One training run, new or resumed from a checkpoint."""

    def __init__(
        self,
        cfg: MarioConfig,
        sinks: Iterable[Sink] = (),
        control: TrainingControl | None = None,
        resume_from: Path | None = None,
        on_iteration: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        # metrics.jsonl is part of the run (resume, monitor, plot, runs read it), not a
        # display: every trainer writes it, whoever drives it.
        self._record = JsonlSink()
        self.sinks = [self._record, *sinks]
        self.control = control or TrainingControl()
        self.resume_from = resume_from
        self.on_iteration = on_iteration
        self.global_step = 0
        self.iteration = 0
        self.episodes: deque[Episode] = deque(maxlen=EPISODE_WINDOW)
        self.run: RunPaths | None = None
        self.venv: VectorEnv | None = None
        self.collector: Collector | WorkerCollector | None = None
        self.timer = PhaseTimer()
        self.loop_seconds = 0.0
        self.hints = HintEngine(cfg)
        self._early_notices: list[str] = []
        self._started = False
        self._holds_run = False
        self._compile_guard: CompileGuard | None = None
        self.ray: RaySession | None = None  # --actors ray: this run's use of the cluster
        self.repair: PathRepair | None = None  # --repair-every: greedy-path repair
        self.best_check: GreedyBestCheck | None = None  # --best-by greedy
        self._best_metrics: dict[str, float] = {}
        self._checks_since_best = 0  # greedy checks in a row that did not beat best.pt
        self._best_settled = False  # best.pt clears every eval start: no check can beat it

    # ----------------------------------------------------------------- events
    def _note(self, message: str) -> None:
        """A one-line notice; held until RunStarted so that metrics.jsonl records it."""
        if self._started:
            self.emit(Notice(message))
        else:
            self._early_notices.append(message)

    def emit(self, event: Event) -> None:
        with self.timer("logging"):
            for sink in self.sinks:
                sink(event)
            if not isinstance(event, Hint):
                for hint in self.hints.observe(event):
                    self.emit(hint)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        resumed = load_checkpoint(self.resume_from) if self.resume_from else None

        self.device, note = resolve_device(cfg.train.device)
        if note:
            self._note(note)
        amp_on, amp_dtype, use_scaler = amp_settings(self.device, cfg.train.amp)
        if cfg.train.amp and not amp_on:
            self._note(f"AMP needs CUDA or a CPU; training in float32 on {self.device.type}")
        elif amp_on and self.device.type == "cpu" and not cpu_has_native_bf16():
            self._note("this CPU has no native bfloat16 (AMX, AVX512-BF16): --amp is slower here")
        elif amp_on and self.device.type == "cpu" and cfg.train.amp is None:
            self._note("bf16 autocast on: this CPU computes bfloat16 natively (--no-amp: float32)")
        seed_everything(cfg.train.seed)

        if cfg.train.actors == "ray":
            # The Ray actors step the envs; the learner needs one only for its spaces.
            self.venv = VectorEnv(cfg.env, n_envs=1, seed=cfg.train.seed, mode="sync")
        else:
            self.venv = VectorEnv(cfg.env, seed=cfg.train.seed, n_groups=cfg.env.step_groups)
        threads = configure_threads(cfg.train.torch_threads)
        keep_freed_memory()
        obs_space = self.venv.single_observation_space
        self.obs_shape = tuple(obs_space.shape)
        self.n_actions = int(self.venv.single_action_space.n)
        if resumed is not None:
            self._check_compatible(resumed)

        self.policy, self.backbone = build_policy(cfg, self.obs_shape, self.n_actions, self.device)
        rollout_size = cfg.algo.n_steps * cfg.env.n_envs
        total_updates = max(1, cfg.train.total_timesteps // rollout_size)
        self.optimiser = GradientStepper(
            self.policy.parameters(), cfg.algo, total_updates, self.device, amp_dtype, use_scaler
        )
        self.algorithm = build_algorithm(cfg, self.policy, self.optimiser, self.obs_shape)
        if cfg.repair.repair_every > 0 and self.policy.recurrent:
            self._note(
                f"greedy-path repair is off for this run: the {cfg.model.recurrent} core's "
                "paths cannot be replayed step by step (--repair-every 0 silences this)"
            )
        elif cfg.repair.repair_every > 0:
            self.repair = PathRepair(cfg, self.policy, self.optimiser, self.device)
        if cfg.train.best_by == GREEDY_BEST:
            self.best_check = GreedyBestCheck(cfg, self.policy, self.device)
            self.best_check.keep_clears = self.repair is not None and cfg.repair.repair_best_clears
            if cfg.train.best_revert_after:
                self._best_metrics[names.BEST_REVERTS] = 0.0
        if cfg.train.actors == "ray":
            from mario_cli.training.ray_actors import RaySession

            self.ray = RaySession.open(cfg, self.algorithm)  # before the run folder exists
            self._note(self.ray.description)
        if replay_name(cfg) and cfg.model.recurrent != "none":
            self._note(
                f"replay with the {cfg.model.recurrent} core: replayed steps are evaluated "
                "from a zero recurrent state (per-step states are not stored)"
            )
        self.storage = RolloutStorage(cfg.algo.n_steps, cfg.env.n_envs, self.obs_shape, self.device)
        if acting_in_workers(
            cfg, self.device, self.policy, self.algorithm, self.obs_shape, self._note
        ):
            self.collector = WorkerCollector(
                self.venv,
                cfg.to_dict(),
                self.policy,
                cfg.algo.n_steps,
                cfg.algo.gamma,
                amp_dtype if amp_on else None,
                self.timer,
            )
        else:
            self.collector = Collector(
                self.venv,
                cfg.algo.n_steps,
                cfg.algo.gamma,
                self.device,
                self.optimiser.autocast,
                self.timer,
            )

        if resumed is not None:
            self.run = RunPaths(self.resume_from.parent.parent)
            # Locked before anything is rewritten: a run another process trains stays intact.
            self.run.acquire()
            self._holds_run = True
            mark_latest(self.run)
            self._restore(resumed)
        else:
            # Weights first: a bad --init-model-path must not leave an empty run folder.
            if cfg.train.init_model_path is not None:
                self._init_weights(cfg.train.init_model_path, cfg.train.allow_partial_init)
            name = cfg.train.run_name or default_run_name(cfg.algo.algo, cfg.env.env_id)
            self.run = create_run(cfg.train.artifacts_dir, name)
            self.run.acquire()
            self._holds_run = True
        self.run.config.write_text(to_toml(cfg.to_dict()))
        self.checkpoints = CheckpointManager(self.run.root, cfg.train.keep_checkpoints)
        best = self.checkpoints.best_score_by(GREEDY_BEST)
        if self.best_check is not None and best is not None:  # a resumed run's best.pt
            self._best_metrics[names.BEST_CLEAR_RATE] = self.best_check.clear_rate_of(best)
        self._compile_policy()
        self.emit(
            RunStarted(
                run_name=self.run.name,
                run_dir=str(self.run.root),
                algo=cfg.algo.algo,
                backbone=self.backbone,
                device=f"{self.device.type} ({threads} threads)",
                env_id=cfg.env.env_id,
                n_envs=cfg.env.n_envs * (cfg.train.n_actors if self.ray else 1),
                total_timesteps=cfg.train.total_timesteps,
                start_step=self.global_step,
                n_parameters=sum(p.numel() for p in self.policy.parameters()),
                resumed_from=str(self.resume_from) if self.resume_from else None,
                config=cfg.to_dict(),
            )
        )
        self._started = True
        for message in self._early_notices:
            self.emit(Notice(message))

    def _check_compatible(self, state: dict[str, Any]) -> None:
        saved_shape = tuple(state.get("obs_shape", ()))
        if saved_shape and saved_shape != self.obs_shape:
            raise CheckpointError(
                f"{self.resume_from} was trained on observations {saved_shape}, but this "
                f"config makes {self.obs_shape}; resume with the run's own env settings"
            )

    def _restore(self, state: dict[str, Any]) -> None:
        skipped = load_weights(self.policy, state["model"], self.cfg.train.allow_partial_init)
        self.global_step = int(state["global_step"])
        self.iteration = int(state["iteration"])
        if skipped or "optimiser" not in state:
            why = f"skipped {', '.join(skipped)}" if skipped else "it holds weights only"
            self._note(f"partial resume ({why}): the optimiser starts fresh")
            self.optimiser.set_schedule_position(self.iteration)  # one step per update so far
        else:
            self.optimiser.load_state_dict(state["optimiser"])
            self.algorithm.load_state_dict(state.get("algorithm", {}))
        self.episodes.extend(Episode.from_record(e) for e in state.get("episodes", []))
        restore_rng_state(state["rng"])
        self._truncate_logs(self.global_step)

    def _init_weights(self, path: Path, allow_partial: bool) -> None:
        state = load_checkpoint(path)
        skipped = load_weights(self.policy, state["model"], allow_partial)
        message = f"initialised weights from {path}"
        if skipped:
            message += f"; skipped (shape or name differs): {', '.join(skipped)}"
        self._note(message)

    def _truncate_logs(self, step: int) -> None:
        """Drop metric lines logged after the checkpoint, so the step axis continues."""
        path = self.run.metrics
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if record.get("step", 0) <= step:
                kept.append(line)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)

    def _compile_policy(self) -> None:
        if not should_compile(self.device, self.cfg.train.compile):
            return
        eager_forward = self.policy.forward
        # An instance attribute: the module (and its state_dict names) stay as they are.
        self._compile_guard = CompileGuard(torch.compile(eager_forward), eager_forward)
        self.policy.forward = self._compile_guard
        dummy = torch.zeros((2, *self.obs_shape), dtype=torch.uint8, device=self.device)
        self.policy(dummy).value.sum().backward()  # compile errors surface on a first call
        self.policy.zero_grad(set_to_none=True)
        self._report_compile_fallback()

    def _report_compile_fallback(self) -> None:
        guard = self._compile_guard
        if guard is not None and guard.note is not None:
            self._note(guard.note)
            self._compile_guard = None  # said once

    # ------------------------------------------------------------- checkpoint
    def _payload(self, with_optimiser: bool = True) -> dict[str, Any]:
        cfg = self.cfg
        payload: dict[str, Any] = {
            "model": {k: v.detach().cpu() for k, v in self.policy.state_dict().items()},
            "global_step": self.global_step,
            "iteration": self.iteration,
            "config": cfg.to_dict(),
            "actions": action_names(cfg.env.movement),
            "obs_shape": list(self.obs_shape),
            "backbone": self.backbone,
            "mario_version": __version__,
            "run_name": self.run.name,
            "episodes": [episode.to_record() for episode in self.episodes],
            "rng": capture_rng_state(),
        }
        if with_optimiser:
            payload["optimiser"] = self.optimiser.state_dict()
            payload["algorithm"] = self.algorithm.state_dict()
        return payload

    def save(self, kind: str) -> Path:
        path = self.checkpoints.save(self._payload(), self.global_step)
        self.emit(CheckpointSaved(self.global_step, str(path), kind))
        return path

    def save_weights(self, path: Path) -> Path:
        """Write the current policy (weights only, loadable by ``mario eval``) to ``path``.

        Outside the rotation, so it is kept; ``mario bench learn`` keeps one per eval point.
        """
        return save_checkpoint(path, self._payload(with_optimiser=False))

    def resume_command(self) -> str:
        command = ["mario", "resume", self.run.name]
        if self.cfg.train.artifacts_dir != Path("artifacts"):
            command += ["--artifacts-dir", str(self.cfg.train.artifacts_dir)]
        return shlex.join(command)

    # --------------------------------------------------------------- the loop
    def train(self) -> RunFinished:
        """Run to ``total_timesteps`` or until stopped; always ends in a RunFinished."""
        try:
            self._setup()
        except BaseException:
            self._close()
            self._record.close()
            raise
        loop_start = time.perf_counter()
        try:
            finished = self._loop()
        except NonFiniteLossError as exc:
            last = self.checkpoints.latest()
            finished = RunFinished(
                self.global_step,
                "failed",
                str(exc),
                str(last) if last else None,
                self.resume_command() if last else None,
                self._summary(),
            )
        except BaseException as exc:
            self._record_crash(exc)
            self._close()
            self._record.close()
            raise
        self.loop_seconds = time.perf_counter() - loop_start
        self._close()
        self.emit(finished)
        self._record.close()
        return finished

    def _record_crash(self, exc: BaseException) -> None:
        """Keep what was learned since the last checkpoint and log how the run ended.

        Nothing is saved when saving is what failed (the checkpoints on disk stay as
        they are) or before the first update; a MarioError's one line is the reason.
        """
        path = None
        if self.iteration > 0 and not isinstance(exc, CheckpointError):
            with contextlib.suppress(Exception):
                path = self.save("crash")
        if path is None:
            with contextlib.suppress(Exception):
                path = self.checkpoints.latest()
        if isinstance(exc, KeyboardInterrupt):
            status, reason = "interrupted", "stopped at once: KeyboardInterrupt"
        elif isinstance(exc, MarioError):
            status, reason = "failed", str(exc)
        else:
            status, reason = "failed", f"crashed: {type(exc).__name__}"
        with contextlib.suppress(Exception):
            self.emit(
                RunFinished(
                    self.global_step,
                    status,
                    reason,
                    str(path) if path is not None else None,
                    self.resume_command() if path is not None else None,
                    self._summary(),
                )
            )

    def _loop(self) -> RunFinished:
        cfg = self.cfg
        total = cfg.train.total_timesteps
        rollout_size = cfg.algo.n_steps * cfg.env.n_envs
        next_save = (self.global_step // cfg.train.save_freq + 1) * cfg.train.save_freq
        start_time, start_step = time.perf_counter(), self.global_step
        self.timer.owner = threading.get_ident()
        with self.timer("env_wait"):  # the first observations come from the envs' reset
            self.collector.reset(cfg.train.seed, self.policy, self.global_step)
        background: BackgroundCollector | RayCollector | None = None
        if self.ray is not None:
            from mario_cli.training.ray_actors import RayCollector

            background = RayCollector(
                cfg,
                self.backbone,
                self.device,
                self.global_step,
                lambda: self.control.stop_requested,
                self.emit,
            )
        elif getattr(self.algorithm, "asynchronous", False) or cfg.algo.overlap_collection:
            storages = [self.storage] + [
                RolloutStorage(cfg.algo.n_steps, cfg.env.n_envs, self.obs_shape, self.device)
                for _ in range(2)
            ]
            background = BackgroundCollector(
                self.collector, self.policy, storages, lambda: self.control.stop_requested
            )
        if background is not None:
            background.publish(self.policy, self.iteration)
            background.start()
        try:
            return self._iterate(total, rollout_size, next_save, start_time, start_step, background)
        finally:
            if background is not None:
                background.stop()

    def _iterate(
        self,
        total: int,
        rollout_size: int,
        next_save: int,
        start_time: float,
        start_step: int,
        background: BackgroundCollector | RayCollector | None,
    ) -> RunFinished:
        cfg = self.cfg
        while self.global_step < total:
            self.control.wait_while_paused()
            if self.control.stop_requested:
                return self._interrupted()
            if background is None:
                batch = self._collect_sync()
                if batch is not None:
                    batch.policy_version = self.iteration
            else:
                with self.timer("env_wait"):
                    batch = background.next_batch()
            if batch is None:
                return self._interrupted()
            with self.timer("logging"):
                self._record_episodes(batch)
            batch.progress = self.global_step / total
            batch.policy_lag = self.iteration - batch.policy_version
            with self.timer("update"):
                metrics = self.algorithm.update(batch)
            notices: list[str] = []
            if self.repair is not None:
                with self.timer("repair"):
                    repaired, notices = self.repair.after_update(self.global_step + rollout_size)
                metrics.update(repaired)
            if background is not None:
                background.publish(self.policy, self.iteration + 1)
            self.global_step += rollout_size
            self.iteration += 1
            last = self.global_step >= total
            if self._best_check_due(last):
                with self.timer("best"):
                    notices.append(self._greedy_best())
            if self.best_check is not None:
                metrics.update(self._best_metrics)
            with self.timer("logging"):  # the iteration's metrics, to every sink
                elapsed = time.perf_counter() - start_time
                metrics.update(self._rollout_metrics())
                metrics.update(getattr(background, "metrics", dict)())  # Ray actors' actors/*
                metrics[names.TIME_FPS] = (self.global_step - start_step) / max(elapsed, 1e-9)
                metrics[names.TIME_ITERATIONS] = self.iteration
                metrics[names.TIME_TOTAL_TIMESTEPS] = self.global_step
                metrics[names.TIME_TIME_ELAPSED] = elapsed
                self.emit(IterationStats(self.global_step, self.iteration, total, metrics))
                for message in notices:
                    self.emit(Notice(message))
                self._report_compile_fallback()
            if self.on_iteration is not None:
                self.on_iteration(self.global_step, metrics)
            with self.timer("logging"):
                if self.global_step >= next_save:
                    self.save("periodic")
                    next_save += cfg.train.save_freq
                if self.control.take_save_request():
                    self.save("manual")
                self._maybe_save_best(metrics)

        with self.timer("logging"):  # as the periodic saves are
            path = self.checkpoints.save_final(self._payload())
        self.emit(CheckpointSaved(self.global_step, str(path), "final"))
        return RunFinished(
            self.global_step,
            "finished",
            "reached total_timesteps",
            str(path),
            None,
            self._summary(),
        )

    def _interrupted(self) -> RunFinished:
        path = self.save("interrupt")
        return RunFinished(
            self.global_step,
            "interrupted",
            self.control.stop_reason or "stopped",
            str(path),
            self.resume_command(),
            self._summary(),
        )

    def _collect_sync(self) -> RolloutBatch | None:
        # While env workers use every core, a second inference thread only contends
        # with them (measured: one thread collects ~8% faster on 2 cores).
        # The policy stays in train mode: NoisyLinear heads explore with their noise.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            # The weights do not change until the rollout is in: one autocast region
            # for all of it casts each weight to the autocast dtype once, not at every
            # call (bit-identical actions; the trainer's acting ~10% cheaper on CPU bf16).
            with self.collector.autocast():
                return self.collector.collect(
                    self.policy, self.storage, lambda: self.control.stop_requested
                )
        finally:
            torch.set_num_threads(threads)

    def _record_episodes(self, batch: RolloutBatch) -> None:
        for step, index, episode in batch.episodes:
            self.episodes.append(episode)
            self.emit(EpisodeEnd.of(step, index, episode))

    def _rollout_metrics(self) -> dict[str, float]:
        return rollout_metrics(list(self.episodes), self.cfg.env.settings_of("restarts").share > 0)

    def _best_check_due(self, last: bool) -> bool:
        """A check on schedule, and one on the last iteration of a run that reaches
        total_timesteps once a check has kept a best.pt: eval plays best.pt, which could
        otherwise miss up to ``best_check_every`` steps of the final weights' learning.
        (With no best.pt, eval plays final.pt itself.)"""
        check = self.best_check
        if check is None or self._best_settled:
            return False
        if check.due(self.global_step):
            return True
        return last and self.checkpoints.best_score_by(GREEDY_BEST) is not None

    def _greedy_best(self) -> str:
        """Score the weights by greedy play from every eval start; keep them if best.

        Once best.pt clears every eval start, a check can at most tie it, and on 1-1
        such a check plays all 31 starts to the flag (84-114 s per check here):
        the checks stop then, unless ``best_revert_after`` needs them to watch the
        current weights.
        """
        check = self.best_check
        best_score = self.checkpoints.best_score_by(GREEDY_BEST)
        perfect = best_score is not None and check.clear_rate_of(best_score) >= 1.0
        if perfect and not self.cfg.train.best_revert_after:
            self._best_settled = True
            return (
                f"best check: best.pt clears all {len(check.starts)} eval starts (a check "
                "could only tie it); no more best checks this run"
            )
        score = check.score(best_score)
        payload = self._payload(with_optimiser=False)
        saved = score.complete and self.checkpoints.save_best(payload, score.value, GREEDY_BEST)
        self._best_metrics[names.BEST_CHECKS] = float(check.checks)
        self._best_metrics[names.BEST_SECONDS] = check.seconds
        if score.complete:
            self._best_metrics[names.BEST_CHECK_CLEAR_RATE] = score.clear_rate
        if saved:
            self._best_metrics[names.BEST_CLEAR_RATE] = score.clear_rate
            self._best_metrics[names.BEST_STEP] = float(self.global_step)
            self.emit(CheckpointSaved(self.global_step, str(self.checkpoints.best_path), "best"))
        took = f"{score.seconds:.0f} s"
        kept = ""
        if self.repair is not None and score.cleared:
            self.repair.keep_clears(score.cleared)
            kept = f"; repair imitates its {len(score.cleared)} clear(s)"
        if saved:
            self._checks_since_best = 0
            return f"best check: {score.describe()} in {took}; saved as best.pt{kept}"
        if score.complete and best_score is not None and score.value >= best_score:
            self._checks_since_best = 0  # as good as best.pt: nothing to go back for
            return (
                f"best check: {score.describe()} in {took}; as good as best.pt, which stays{kept}"
            )
        self._checks_since_best += 1
        return f"best check: {score.describe()} in {took}; best.pt stays{kept}{self._revert()}"

    def _revert(self) -> str:
        """Go back to best.pt's weights after ``best_revert_after`` checks that did not
        beat it; the optimiser, schedules, kept repair paths and step count go on.

        Why: greedy play is a few fixed paths, and one update can move the argmax on a
        stretch they share; a policy that drifted off its best paths rarely finds them
        again (measured on 1-1: 16/31 greedy clears at 33k steps, 0-2 of the first 16
        in every check of the next 200k)."""
        after = self.cfg.train.best_revert_after
        if not after or self._checks_since_best < after:
            return ""
        if self.checkpoints.best_score_by(GREEDY_BEST) is None:
            return ""  # no best.pt of a greedy check to go back to
        best = load_checkpoint(self.checkpoints.best_path)
        load_weights(self.policy, best["model"], allow_partial=False, source="best.pt")
        self._checks_since_best = 0
        reverts = self._best_metrics.get(names.BEST_REVERTS, 0.0) + 1
        self._best_metrics[names.BEST_REVERTS] = reverts
        return (
            f"; {after} check(s) without beating it: training goes back to best.pt's "
            f"weights (step {int(best['global_step']):,})"
        )

    def _maybe_save_best(self, metrics: dict[str, float]) -> None:
        if self.best_check is not None:  # greedy checks choose best.pt
            return
        # Judge only once the window holds enough stage-start episodes to mean something.
        if len(stage_start_episodes(self.episodes)) < min(20, EPISODE_WINDOW):
            return
        score = metrics[names.ROLLOUT_CLEAR_RATE] * 10_000 + metrics[names.ROLLOUT_AVG_MAX_X_POS]
        if self.checkpoints.save_best(self._payload(with_optimiser=False), score):
            self.emit(CheckpointSaved(self.global_step, str(self.checkpoints.best_path), "best"))

    def _summary(self) -> dict[str, float]:
        summary = {"global_step": float(self.global_step), "iterations": float(self.iteration)}
        summary.update(self._rollout_metrics())
        return summary

    def _close(self) -> None:
        """Release the envs and the run (metrics.jsonl stays open for RunFinished)."""
        if self._holds_run:  # never remove the lock of another process training this run
            self.run.release()
            self._holds_run = False
        if self.venv is not None:
            self.venv.close()
            self.venv = None
        if isinstance(self.collector, WorkerCollector):
            self.collector.close()  # its shared memory, once the workers have let go
        if self.ray is not None:
            self.ray.close()
            self.ray = None
        if self.repair is not None:
            self.repair.close()
        if self.best_check is not None:
            self.best_check.close()
