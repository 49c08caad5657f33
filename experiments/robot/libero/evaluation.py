"""The LIBERO evaluation runner: plans episodes, serves a policy to simulator workers, records and reports results.

The runner's process owns the policy (torch, no TensorFlow, no rendering); ``--num_workers`` spawned processes own
the LIBERO envs (see ``env_worker.py``). Every episode is fixed by its task id and episode index (initial state and
position in the env's reset stream), so results do not depend on scheduling, and each finished episode is appended
to the run's JSONL at once, so an interrupted run resumes under the same ``--run_id`` by skipping what is there.

Outputs in ``--local_log_dir``, all named after the run id:
    {run_id}.txt                  upstream's text log, opened by an environment fingerprint and every setting
    {run_id}.jsonl                one line per finished episode (``EpisodeResult``)
    {run_id}--config.json         the flags of the run (resuming checks them)
    {run_id}--summary.json        per-task and total success rates
    {run_id}--success_rates.png   per-task bar chart
    {run_id}--rollouts/*.mp4      with ``--save_videos``
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from experiments.robot.libero.config import (
    DEFAULT_INITIAL_STATES,
    GenerateConfig,
    check_resumable,
    config_as_dict,
    episode_max_steps,
    validate_config,
)
from experiments.robot.libero.env_worker import EpisodeSettings, EpisodeSpec, WorkUnit, worker_main
from experiments.robot.libero.sim_setup import (
    configure_rendering,
    prepare_libero,
    simulator_worker_context,
    task_init_states,
)
from experiments.robot.policy import Policy
from experiments.robot.results import (
    EpisodeResult,
    EpisodeStore,
    plot_success_rates,
    summarize,
    summary_payload,
    total_success_rate,
)
from experiments.robot.robot_utils import environment_fingerprint
from prismatic.util.io import remove_stale_temporaries, write_json_atomic
from prismatic.vla.constants import constants_for

logger = logging.getLogger(__name__)

WORKER_SHUTDOWN_SECONDS = 30


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes its outputs."""

    log: Path
    episodes: Path
    config: Path
    summary: Path
    chart: Path
    videos: Path

    @classmethod
    def for_run(cls, log_dir: Path, run_id: str) -> RunPaths:
        return cls(
            log=log_dir / f"{run_id}.txt",
            episodes=log_dir / f"{run_id}.jsonl",
            config=log_dir / f"{run_id}--config.json",
            summary=log_dir / f"{run_id}--summary.json",
            chart=log_dir / f"{run_id}--success_rates.png",
            videos=log_dir / f"{run_id}--rollouts",
        )


def make_run_id(cfg: GenerateConfig) -> str:
    """``--run_id`` if given, else upstream's ``EVAL-{suite}-{model_family}-{date_time}[--{note}]``."""
    if cfg.run_id:
        return cfg.run_id
    run_id = f"EVAL-{cfg.task_suite_name}-{cfg.model_family}-{time.strftime('%Y_%m_%d-%H_%M_%S')}"
    return f"{run_id}--{cfg.run_id_note}" if cfg.run_id_note else run_id


class RunLog:
    """Upstream's text log: every message goes to the console and is appended (and flushed) to the file."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def __call__(self, message: str) -> None:
        logger.info(message)
        self._file.write(message + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class TaskPlan:
    """All episodes of one task that the run evaluates (finished or not)."""

    task_id: int
    task: str
    bddl_file: str
    episodes: tuple[EpisodeSpec, ...]


def _task_episodes(
    cfg: GenerateConfig,
    default_states: np.ndarray,
    all_states: dict[str, Any] | None,
    task: str,
    log: Callable[[str], None],
) -> list[EpisodeSpec]:
    """Episodes 0..num_trials_per_task-1 with their initial states, as upstream's ``load_initial_states``."""
    if all_states is None:
        if cfg.num_trials_per_task > len(default_states):
            raise ValueError(
                f"--num_trials_per_task {cfg.num_trials_per_task} exceeds the {len(default_states)} benchmark "
                f"initial states of task {task!r}"
            )
        return [EpisodeSpec(index, index, default_states[index]) for index in range(cfg.num_trials_per_task)]

    task_key = task.replace(" ", "_")
    if task_key not in all_states:
        raise ValueError(f"--initial_states_path {cfg.initial_states_path}: no entry {task_key!r} for task {task!r}")
    episodes: list[EpisodeSpec] = []
    for index in range(cfg.num_trials_per_task):
        demo = all_states[task_key].get(f"demo_{index}")
        if demo is None or "success" not in demo or "initial_state" not in demo:
            raise ValueError(
                f"--initial_states_path {cfg.initial_states_path}: {task_key}/demo_{index} needs keys "
                "'success' and 'initial_state'"
            )
        if not demo["success"]:
            log(f"Skipping episode {index} of task {task!r}: its expert demo failed")
            continue
        # A skipped demo is never reset in upstream's loop, so the reset stream counts run episodes only.
        episodes.append(EpisodeSpec(index, len(episodes), np.asarray(demo["initial_state"])))
    return episodes


def plan_tasks(cfg: GenerateConfig, log: Callable[[str], None]) -> list[TaskPlan]:
    """The tasks (``--task_ids`` or all) of the suite with their episodes, read from the LIBERO benchmark."""
    prepare_libero()
    from libero.libero import benchmark, get_libero_path  # importable only after prepare_libero()

    task_suite = benchmark.get_benchmark_dict()[cfg.task_suite_name]()
    task_ids = list(range(task_suite.n_tasks)) if cfg.task_ids is None else list(cfg.task_ids)
    invalid = [task_id for task_id in task_ids if not 0 <= task_id < task_suite.n_tasks]
    if invalid or len(set(task_ids)) != len(task_ids):
        raise ValueError(
            f"--task_ids {cfg.task_ids}: expected distinct ids in [0, {task_suite.n_tasks}) for {cfg.task_suite_name}"
        )
    all_states = None
    if cfg.initial_states_path != DEFAULT_INITIAL_STATES:
        log(f"Using initial states from {cfg.initial_states_path}")
        all_states = json.loads(Path(cfg.initial_states_path).read_text())
    plans = []
    for task_id in task_ids:
        task = task_suite.get_task(task_id)
        bddl_file = str(Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file)
        default_states = task_init_states(task_suite, task_id)
        episodes = _task_episodes(cfg, default_states, all_states, task.language, log)
        plans.append(TaskPlan(task_id, task.language, bddl_file, tuple(episodes)))
    return plans


def split_work(plans: list[TaskPlan], finished: set[tuple[int, int]], num_workers: int) -> list[WorkUnit]:
    """Pending episodes as work units: each task's episodes in order, split into contiguous chunks only when
    there are fewer tasks than workers (a chunk replays the resets before its first episode)."""
    pending = {
        plan.task_id: [spec for spec in plan.episodes if (plan.task_id, spec.episode) not in finished] for plan in plans
    }
    tasks_with_work = [plan for plan in plans if pending[plan.task_id]]
    if not tasks_with_work:
        return []
    chunks_per_task = math.ceil(num_workers / len(tasks_with_work))
    units = []
    for plan in tasks_with_work:
        for chunk in np.array_split(np.arange(len(pending[plan.task_id])), chunks_per_task):
            if len(chunk):
                episodes = tuple(pending[plan.task_id][index] for index in chunk)
                units.append(WorkUnit(plan.task_id, plan.task, plan.bddl_file, episodes))
    return units


class SimWorkerPool:
    """Spawned LIBERO worker processes, fed work units and served policy requests one at a time."""

    def __init__(self, num_workers: int, settings: EpisodeSettings):
        context = simulator_worker_context()
        self._connections: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(num_workers):
            runner_end, worker_end = context.Pipe(duplex=True)
            process = context.Process(
                target=worker_main, args=(worker_end, settings), name=f"libero-worker-{index}", daemon=True
            )
            process.start()
            worker_end.close()
            self._connections.append(runner_end)
            self._processes.append(process)

    def _worker_died(self, index: int) -> RuntimeError:
        process = self._processes[index]
        process.join(timeout=5)
        return RuntimeError(
            f"LIBERO worker {index} (pid {process.pid}) exited unexpectedly with code {process.exitcode}; "
            "a negative code is the killing signal (-11: a segfault, e.g. TensorFlow imported next to Mesa rendering)"
        )

    def run(self, units: list[WorkUnit], policy: Policy | None, on_episode: Callable[[EpisodeResult], None]) -> None:
        """Run every unit, answering action requests with ``policy`` (None: the workers ask a policy server) and
        passing each finished episode on."""
        queue = deque(units)
        active: dict[Connection, int] = {}
        for index, connection in enumerate(self._connections):
            if queue:
                connection.send(queue.popleft())
                active[connection] = index
        while active:
            for connection in wait(list(active)):
                index = active[connection]
                try:
                    message = connection.recv()
                except EOFError:
                    raise self._worker_died(index) from None
                kind = message[0]
                if kind == "act" and policy is not None:
                    connection.send(policy.predict_chunk(message[1], message[2]))
                elif kind == "episode":
                    on_episode(message[1])
                elif kind == "unit_done":
                    if queue:
                        connection.send(queue.popleft())
                    else:
                        del active[connection]
                elif kind == "failed":
                    raise RuntimeError(f"LIBERO worker {index} failed:\n{message[1]}")
                else:
                    raise RuntimeError(f"LIBERO worker {index} sent an unknown message {kind!r}")

    def close(self, graceful: bool = True) -> None:
        """Stop the workers: let them close their envs (``graceful``), else terminate them at once."""
        if graceful:
            for connection in self._connections:
                with contextlib.suppress(BrokenPipeError, OSError):
                    connection.send(None)
        deadline = time.monotonic() + (WORKER_SHUTDOWN_SECONDS if graceful else 0)
        for process in self._processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join()
        for connection in self._connections:
            connection.close()

    def __enter__(self) -> SimWorkerPool:
        return self

    def __exit__(self, exception_type: type[BaseException] | None, *exc_info: Any) -> None:
        self.close(graceful=exception_type is None)


def _log_header(log: RunLog, cfg: GenerateConfig, run_id: str, finished: int) -> None:
    log(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {'resuming' if finished else 'starting'} run {run_id} ===")
    if finished:
        log(f"{finished} episodes already finished in {run_id}.jsonl are skipped")
    else:
        log(f"Logging to {log.path}; pass --run_id {run_id} to resume this run after an interruption")
    log("Environment:")
    for name, value in environment_fingerprint().items():
        log(f"  {name}: {value}")
    log("Settings:")
    for name, value in config_as_dict(cfg).items():
        log(f"  {name}: {value}")
    log(f"Episode limit: {episode_max_steps(cfg)} policy steps after {cfg.num_steps_wait} wait steps")
    log(f"Task suite: {cfg.task_suite_name}")


class _Progress:
    """Running counts for upstream's per-episode and per-task log lines (and wandb)."""

    def __init__(self, log: RunLog, plans: list[TaskPlan], results: list[EpisodeResult], wandb_run: Any):
        self.log, self.wandb_run = log, wandb_run
        planned = {(plan.task_id, spec.episode) for plan in plans for spec in plan.episodes}
        self.results = [result for result in results if result.key in planned]
        done = {result.key for result in self.results}
        self.remaining = {
            plan.task_id: sum((plan.task_id, spec.episode) not in done for spec in plan.episodes) for plan in plans
        }

    def __call__(self, result: EpisodeResult) -> None:
        self.results.append(result)
        episodes, successes, _ = total_success_rate(summarize(self.results))
        self.log(f"\nTask: {result.task}")
        self.log(f"Episode {result.episode} of task {result.task_id}: {result.steps} steps, {result.seconds:.1f} s")
        if result.error:
            self.log(f"Episode error: {result.error}")
        if result.video:
            self.log(f"Saved rollout MP4 at path {result.video}")
        self.log(f"Success: {result.success}")
        self.log(f"# episodes completed so far: {episodes}")
        self.log(f"# successes: {successes} ({successes / episodes * 100:.1f}%)")
        self.remaining[result.task_id] -= 1
        if self.remaining[result.task_id] == 0:
            self.log_task(result.task_id)

    def log_task(self, task_id: int) -> None:
        summaries = summarize(self.results)
        task_summary = next(s for s in summaries if s.task_id == task_id)
        _, _, total_rate = total_success_rate(summaries)
        self.log(f"Current task success rate: {task_summary.success_rate}")
        self.log(f"Current total success rate: {total_rate}")
        if self.wandb_run is not None:
            self.wandb_run.log(
                {
                    f"success_rate/{task_summary.task}": task_summary.success_rate,
                    f"num_episodes/{task_summary.task}": task_summary.episodes,
                }
            )


def _report(
    log: RunLog, run_id: str, suite: str, paths: RunPaths, results: list[EpisodeResult], wandb_run: Any
) -> float:
    """Per-task and final lines of the log, summary JSON, bar chart and wandb totals; returns the success rate."""
    summaries = summarize(results)
    episodes, successes, success_rate = total_success_rate(summaries)
    log("Per-task success rates:")
    for summary in summaries:
        log(
            f"  task {summary.task_id}: {summary.successes}/{summary.episodes} "
            f"({100 * summary.success_rate:.1f}%) {summary.task}"
        )
    log("Final results:")
    log(f"Total episodes: {episodes}")
    log(f"Total successes: {successes}")
    log(f"Overall success rate: {success_rate:.4f} ({success_rate * 100:.1f}%)")
    write_json_atomic(paths.summary, summary_payload(suite, run_id, summaries))
    plot_success_rates(paths.chart, suite, summaries)
    log(f"Results: {paths.episodes}, {paths.summary}, {paths.chart}")
    if wandb_run is not None:
        wandb_run.log({"success_rate/total": success_rate, "num_episodes/total": episodes})
        wandb_run.save(str(paths.log))
    return success_rate


def eval_libero(cfg: GenerateConfig, policy: Policy | None, gripper: str) -> float:
    """Evaluate ``policy`` (None with ``--policy_server``: the workers query the server) on the LIBERO suite of
    ``cfg``; returns the total success rate of the planned episodes. ``gripper``: the checkpoint's gripper convention
    (``PolicyConfig.embodiment.gripper``), which post-processes every executed action.

    ``cfg.unnorm_key`` should already be the key the policy uses (it is logged and saved with the run).
    """
    validate_config(cfg)
    configure_rendering()
    platform = constants_for(cfg.task_suite_name)
    if cfg.model_family == "openvla" and cfg.num_open_loop_steps != platform.num_actions_chunk:
        logger.warning(
            "--num_open_loop_steps %d differs from the %s action chunk (%d); upstream recommends executing the "
            "full chunk for speed and success rate",
            cfg.num_open_loop_steps,
            platform.name,
            platform.num_actions_chunk,
        )
    run_id = make_run_id(cfg)
    paths = RunPaths.for_run(Path(cfg.local_log_dir), run_id)
    for folder in (paths.config.parent, paths.videos):  # files of killed writers (atomic_output's temporaries)
        remove_stale_temporaries(folder)
    if paths.config.exists():
        check_resumable(json.loads(paths.config.read_text()), cfg)
    else:
        write_json_atomic(paths.config, config_as_dict(cfg))
    store = EpisodeStore(paths.episodes)
    previous_results = store.load()

    log = RunLog(paths.log)
    wandb_run = None
    try:
        _log_header(log, cfg, run_id, len(previous_results))
        log(f"Gripper convention of the checkpoint: {gripper}")
        if cfg.use_wandb:
            import wandb

            wandb_run = wandb.init(entity=cfg.wandb_entity, project=cfg.wandb_project, name=run_id)
        plans = plan_tasks(cfg, log)
        progress = _Progress(log, plans, previous_results, wandb_run)
        finished = {result.key for result in previous_results}
        units = split_work(plans, finished, cfg.num_workers)
        log(
            f"Episodes to run: {sum(len(unit.episodes) for unit in units)} "
            f"(on {min(cfg.num_workers, len(units))} of {cfg.num_workers} workers)"
        )
        settings = EpisodeSettings(
            suite=cfg.task_suite_name,
            gripper=gripper,
            num_steps_wait=cfg.num_steps_wait,
            max_steps=episode_max_steps(cfg),
            num_open_loop_steps=cfg.num_open_loop_steps,
            action_dim=platform.action_dim,
            env_img_res=cfg.env_img_res,
            video_dir=str(paths.videos) if cfg.save_videos else None,
            video_episodes=cfg.video_episodes,
            policy_server=cfg.policy_server,
            action_ensembling=cfg.action_ensembling,
        )

        def record(result: EpisodeResult) -> None:
            store.append(result)
            progress(result)

        if units:
            with SimWorkerPool(min(cfg.num_workers, len(units)), settings) as pool:
                pool.run(units, policy, record)

        return _report(log, run_id, cfg.task_suite_name, paths, progress.results, wandb_run)
    finally:
        log.close()
        if wandb_run is not None:
            wandb_run.finish()
