"""A LIBERO simulator worker: runs episodes and asks the policy process for action chunks over a pipe.

Protocol (tuples over one duplex ``multiprocessing`` connection per worker):

    runner -> worker   WorkUnit            run these episodes of one task, in order
                       np.ndarray          the action chunk answering the last "act" request
                       None                shut down
    worker -> runner   ("act", observation, instruction)
                       ("episode", EpisodeResult)
                       ("unit_done", task_id)
                       ("failed", traceback text)

With ``--policy_server`` a worker sends no "act" messages: it asks the policy server itself (one websocket
connection per worker), so the server can batch the workers' requests.

Workers never import TensorFlow and render with ``MUJOCO_GL`` = egl or osmesa (inherited from the runner).
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import imageio
import numpy as np
from websockets.exceptions import ConnectionClosed

from experiments.robot.action_ensembling import EpisodeActionSelector
from experiments.robot.libero.libero_utils import (
    LIBERO_DUMMY_ACTION,
    CameraGate,
    TaskEnv,
    prepare_observation,
    robot_state,
    video_file_name,
)
from experiments.robot.libero.sim_setup import configure_rendering, init_simulator_worker
from experiments.robot.policy import NonFiniteActionError, Observation, check_finite_actions
from experiments.robot.results import EpisodeResult
from experiments.robot.robot_utils import postprocess_actions
from experiments.robot.serving.client import PolicyClient, PolicyServerError
from prismatic.util.io import atomic_output
from prismatic.vla.image_utils import OPENVLA_IMAGE_SIZE, rotate_180

VIDEO_FPS = 30


@dataclass(frozen=True)
class EpisodeSettings:
    """What every episode of a run shares."""

    suite: str
    gripper: str  # the checkpoint's gripper convention (PolicyConfig.embodiment.gripper; the server's metadata)
    num_steps_wait: int
    max_steps: int  # policy steps after the wait
    num_open_loop_steps: int
    action_dim: int
    env_img_res: int
    video_dir: str | None  # None: no videos
    video_episodes: int | None = None  # with video_dir: record episodes 0..N-1 of each task only (None: all)
    policy_server: str | None = None  # ws://host:port: chunks come from a policy server (in the dataset's frame)
    action_ensembling: str = "none"  # see experiments/robot/action_ensembling.py


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode: ``reset_index`` is how many ``env.reset()`` calls precede it since ``env.seed(0)``.

    Upstream runs a task's episodes back to back on one env, so episode k starts from the RNG state left by k
    earlier resets (fewer when initial states from a JSON skip failed demos). Workers replay the missing resets,
    which makes every episode independent of which worker runs it and of what ran before.
    """

    episode: int
    reset_index: int
    initial_state: np.ndarray


@dataclass(frozen=True)
class WorkUnit:
    task_id: int
    task: str
    bddl_file: str
    episodes: tuple[EpisodeSpec, ...]  # ascending reset_index


class PolicyError(RuntimeError):
    """A failed policy request: stops the evaluation instead of counting as a failed episode."""


class RunnerGone(PolicyError):
    """The runner closed the connection; the worker just exits."""


@dataclass
class EpisodeOutcome:
    success: bool
    steps: int
    error: str | None
    final_state: np.ndarray
    frames: list[np.ndarray]


def run_episode(
    env: Any,
    obs: dict[str, np.ndarray],
    settings: EpisodeSettings,
    request_chunk: Callable[[Observation], np.ndarray],
    keep_frames: bool,
    cameras: CameraGate | None = None,
) -> EpisodeOutcome:
    """Upstream's episode from the initial observation ``obs``: ``num_steps_wait`` no-ops, then up to ``max_steps``
    policy actions, re-querying the policy whenever the open-loop queue is empty. Each executed action is selected
    (``--action_ensembling``) from chunks in the dataset's frame and then post-processed by the checkpoint's gripper
    convention, whether the chunks come from the runner or from a policy server. A simulator exception ends the
    episode as a failure (recorded in ``error``).

    With ``cameras`` (installed on ``env``), the cameras render only for the observations the policy reads (every
    step when ``keep_frames``); ``obs`` must hold rendered images."""
    select_actions = EpisodeActionSelector(settings.action_ensembling, settings.num_open_loop_steps)
    action_queue: deque[np.ndarray] = deque()
    frames: list[np.ndarray] = []
    success, steps, error = False, 0, None

    def step(action: Sequence[float], next_observation_read: bool) -> tuple[dict[str, np.ndarray], bool]:
        if cameras is not None:
            cameras.render_next = keep_frames or next_observation_read
        next_obs, _, done, _ = env.step(list(action))
        return next_obs, done

    try:
        for wait_step in range(settings.num_steps_wait):
            obs, _ = step(LIBERO_DUMMY_ACTION, wait_step == settings.num_steps_wait - 1)
        while steps < settings.max_steps:
            if keep_frames:
                frames.append(rotate_180(obs["agentview_image"]))
            if not action_queue:
                observation, _ = prepare_observation(obs, OPENVLA_IMAGE_SIZE)
                # Without ensembling: the first num_open_loop_steps actions of the chunk (upstream's deque(maxlen=k)
                # would keep the last k when k < chunk; identical for the default k = chunk).
                action_queue.extend(select_actions(request_chunk(observation)))
            action = postprocess_actions(action_queue.popleft(), settings.gripper)
            obs, done = step(action.tolist(), not action_queue)
            steps += 1
            if done:
                success = True
                break
    except PolicyError:
        raise
    except Exception as exception:  # noqa: BLE001 - upstream counts any simulator error as a failed episode
        error = f"{type(exception).__name__}: {exception}"
    return EpisodeOutcome(success, steps, error, robot_state(obs), frames)


def save_video(frames: list[np.ndarray], path: Path) -> None:
    """Write frames as an MP4 at 30 fps, atomically."""
    with atomic_output(path) as temporary, imageio.get_writer(temporary, fps=VIDEO_FPS, format="FFMPEG") as writer:
        for frame in frames:
            writer.append_data(frame)


def _run_unit(
    unit: WorkUnit,
    task_env: TaskEnv | None,
    settings: EpisodeSettings,
    connection: Connection,
    server: PolicyClient | None,
) -> TaskEnv:
    if task_env is None or task_env.task_id != unit.task_id or task_env.resets_done > unit.episodes[0].reset_index:
        if task_env is not None:
            task_env.close()
        task_env = TaskEnv(unit.task_id, unit.bddl_file, settings.env_img_res)

    def request_chunk(observation: Observation) -> np.ndarray:
        if server is not None:
            try:
                reply = server.predict_chunk(observation, unit.task)
            except (PolicyServerError, ConnectionClosed) as error:
                raise PolicyError(f"policy server {settings.policy_server}: {error}") from error
        else:
            connection.send(("act", observation, unit.task))
            try:
                reply = connection.recv()
            except EOFError as error:
                raise RunnerGone("the evaluation runner closed the connection") from error
        chunk = np.asarray(reply, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != settings.action_dim:
            raise PolicyError(
                f"policy returned an action chunk of shape {chunk.shape}; expected [chunk, {settings.action_dim}]"
            )
        try:
            return check_finite_actions(chunk)
        except NonFiniteActionError as error:
            raise PolicyError(f"policy: {error}") from None

    for spec in unit.episodes:
        started = time.perf_counter()
        obs = task_env.start_episode(spec.reset_index, spec.initial_state)
        recorded = settings.video_dir is not None and (
            settings.video_episodes is None or spec.episode < settings.video_episodes
        )
        outcome = run_episode(task_env.env, obs, settings, request_chunk, recorded, task_env.cameras)
        seconds = time.perf_counter() - started
        video = None
        if recorded:
            video_name = video_file_name(unit.task_id, spec.episode, outcome.success, unit.task)
            video_path = Path(settings.video_dir) / video_name
            save_video(outcome.frames, video_path)
            video = str(video_path)
        result = EpisodeResult(
            suite=settings.suite,
            task_id=unit.task_id,
            task=unit.task,
            episode=spec.episode,
            success=outcome.success,
            steps=outcome.steps,
            seconds=round(seconds, 3),
            error=outcome.error,
            final_state=tuple(float(value) for value in outcome.final_state),
            video=video,
        )
        connection.send(("episode", result))
    connection.send(("unit_done", unit.task_id))
    return task_env


def worker_main(connection: Connection, settings: EpisodeSettings) -> None:
    """Entry point of a worker process: serve work units until told to stop (``None``) or the runner is gone."""
    task_env = None
    server = None
    try:
        configure_rendering()
        init_simulator_worker()
        if settings.policy_server is not None:
            server = PolicyClient(settings.policy_server)
        while True:
            try:
                unit = connection.recv()
            except EOFError:
                return
            if unit is None:
                return
            task_env = _run_unit(unit, task_env, settings, connection, server)
    except RunnerGone:
        return
    except Exception:  # noqa: BLE001 - reported to the runner, which stops the evaluation
        with contextlib.suppress(BrokenPipeError, OSError):
            connection.send(("failed", traceback.format_exc()))
    finally:
        if task_env is not None:
            task_env.close()
        if server is not None:
            server.close()
