"""LIBERO-specific pieces of an episode: environment, observation for the policy, action for the simulator."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from experiments.robot.policy import Observation
from prismatic.vla.image_utils import OPENVLA_IMAGE_SIZE, resize_image_for_policy, rotate_180

# robosuite's camera observables of a LIBERO env (the policy's primary and wrist views).
CAMERA_OBSERVABLES = ("agentview_image", "robot0_eye_in_hand_image")
# Arm still, gripper open: stepped while objects settle at the start of an episode.
LIBERO_DUMMY_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def get_libero_env(bddl_file: str, resolution: int, camera_depths: bool = False) -> Any:
    """An off-screen LIBERO env with both cameras at ``resolution``, seeded with 0 as upstream.

    ``camera_depths`` adds each camera's raw depth buffer (``{camera}_depth``, values in [0, 1]) to the observations.

    The seed (numpy's global RNG) drives the scene randomisation of every later ``reset()``: it changes what the
    cameras see even when the initial state is fixed, so episode k of a task is only reproduced after k resets.
    Call :func:`experiments.robot.libero.sim_setup.prepare_libero` first.
    """
    from libero.libero.envs import OffScreenRenderEnv  # needs prepare_libero(); must not load at import time

    env = OffScreenRenderEnv(
        bddl_file_name=bddl_file, camera_heights=resolution, camera_widths=resolution, camera_depths=camera_depths
    )
    env.seed(0)
    return env


class TaskEnv:
    """The env of one task, with its reset stream: the resets done since ``env.seed(0)`` and the state of the RNG
    they draw from (used by the evaluation's workers and by the demonstration regeneration).

    LIBERO's scene randomisation draws from numpy's global RNG. The stream's RNG state is saved after every reset and
    restored before the next one, so whatever else draws from the global RNG in this process (the episodes in between,
    another task's env, a library) cannot change the scene a reset builds: episode k sees exactly the k-th reset.
    """

    def __init__(self, task_id: int, bddl_file: str, resolution: int):
        self.task_id = task_id
        self.env = get_libero_env(bddl_file, resolution)
        self.cameras = CameraGate()  # renders every step until an episode runner gates it
        self.rng_state = np.random.get_state()  # as env.seed(0) left it
        self.resets_done = 0

    def start_episode(self, reset_index: int, initial_state: np.ndarray) -> dict[str, np.ndarray]:
        """Replay the resets before ``reset_index`` in the reset stream, reset, set ``initial_state`` (its
        observation rendered)."""
        while self.resets_done <= reset_index:
            np.random.set_state(self.rng_state)
            self.env.reset()
            self.rng_state = np.random.get_state()
            self.resets_done += 1
            self.cameras.install(self.env)  # a reset builds new sensors
        self.cameras.render_next = True
        return self.env.set_init_state(initial_state)

    def close(self) -> None:
        self.env.close()


class CameraGate:
    """Renders a LIBERO env's cameras only for the observations someone will look at.

    robosuite samples each camera observable once per control step, inside ``env.step``'s substep loop. The gate keeps
    that schedule (the observables stay enabled and sample at the same substep) and replaces only their sensors: when
    ``render_next`` is False a sensor returns its last frame instead of rendering. Rendering does not change the
    simulation, so an episode steps through identical states and, at the steps where it renders, sees identical
    images. Set ``render_next`` before each ``env.step``; call :meth:`install` after every ``env.reset()`` (a hard
    reset builds new sensors).
    """

    def __init__(self) -> None:
        self.render_next = True

    def install(self, env: Any) -> None:
        observables = env.env._observables  # robosuite keeps them private; there is no public way to wrap a sensor
        for name in CAMERA_OBSERVABLES:
            # Assigned directly: set_sensor() would render once to validate the sensor.
            observables[name]._sensor = self._gated(observables[name]._sensor)

    def _gated(self, sensor: Any) -> Any:
        last_frame: list[np.ndarray] = []

        def gated_sensor(obs_cache: dict[str, Any]) -> np.ndarray:
            if self.render_next or not last_frame:
                last_frame[:] = [sensor(obs_cache)]
            return last_frame[0]

        gated_sensor.__modality__ = sensor.__modality__
        return gated_sensor


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w) to axis-angle (axis scaled by angle in radians), robosuite's formula."""
    w = min(max(float(quat[3]), -1.0), 1.0)
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):  # (close to) zero rotation
        return np.zeros(3)
    return np.asarray(quat[:3], dtype=np.float64) * 2.0 * math.acos(w) / den


def robot_state(obs: dict[str, np.ndarray]) -> np.ndarray:
    """8-D proprio: end-effector position (3), orientation as axis-angle (3), gripper joint positions (2)."""
    return np.concatenate((obs["robot0_eef_pos"], quat2axisangle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]))


def prepare_observation(
    obs: dict[str, np.ndarray], resize_size: int = OPENVLA_IMAGE_SIZE
) -> tuple[Observation, np.ndarray]:
    """Policy observation (both cameras rotated 180 deg, JPEG round trip, lanczos3 to 224; proprio) and the
    rotated full-resolution third-person frame for the rollout video."""
    frame = rotate_180(obs["agentview_image"])
    wrist_frame = rotate_180(obs["robot0_eye_in_hand_image"])
    observation: Observation = {
        "full_image": resize_image_for_policy(frame, resize_size),
        "wrist_image": resize_image_for_policy(wrist_frame, resize_size),
        "state": robot_state(obs),
    }
    return observation, frame


def video_file_name(task_id: int, episode: int, success: bool, task_description: str) -> str:
    """Rollout MP4 name; the task text is shortened as upstream (lower case, separators -> "_", 50 chars)."""
    short_task = task_description.lower().replace(" ", "_").replace("\n", "_").replace(".", "_")[:50]
    return f"task={task_id}--episode={episode}--success={success}--{short_task}.mp4"
