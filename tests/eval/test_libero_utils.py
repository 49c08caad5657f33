"""Episode pieces that need no simulator: proprio, action post-processing, policy observation, video names."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from experiments.robot.libero.libero_utils import (
    prepare_observation,
    quat2axisangle,
    robot_state,
    video_file_name,
)
from experiments.robot.robot_utils import environment_fingerprint, postprocess_actions
from prismatic.vla.image_utils import resize_image_for_policy


@pytest.mark.parametrize(
    ("quat", "axis_angle"),
    [
        ((0.0, 0.0, 0.0, 1.0), (0.0, 0.0, 0.0)),  # identity
        ((0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)), (0.0, 0.0, math.pi / 2)),  # 90 deg about z
        ((1.0, 0.0, 0.0, 0.0), (math.pi, 0.0, 0.0)),  # 180 deg about x (LIBERO's gripper points down)
        ((0.0, 0.0, 0.0, 1.0000001), (0.0, 0.0, 0.0)),  # w clipped to 1
    ],
)
def test_quat2axisangle(quat: tuple, axis_angle: tuple) -> None:
    quaternion = np.array(quat)
    np.testing.assert_allclose(quat2axisangle(quaternion), axis_angle, atol=1e-7)
    assert quaternion[3] == quat[3]  # the input is not modified (upstream's version clips it in place)


def test_gripper_is_post_processed_by_the_checkpoints_convention() -> None:
    chunk = np.array([[0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 0.8], [0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 0.2]])
    processed = postprocess_actions(chunk, "libero")
    np.testing.assert_array_equal(processed[:, :6], chunk[:, :6])
    np.testing.assert_array_equal(processed[:, 6], [-1.0, 1.0])  # dataset 1 = open -> LIBERO -1 = open
    np.testing.assert_array_equal(postprocess_actions(chunk, "none"), chunk)  # e.g. a LeRobot-trained checkpoint
    assert chunk[0, 6] == 0.8
    with pytest.raises(ValueError, match="'flip'"):
        postprocess_actions(chunk, "flip")


def test_policy_observation_follows_upstream(agentview_frame: np.ndarray, wrist_frame: np.ndarray) -> None:
    obs = {
        "agentview_image": agentview_frame,
        "robot0_eye_in_hand_image": wrist_frame,
        "robot0_eef_pos": np.array([-0.2, 0.01, 1.19]),
        "robot0_eef_quat": np.array([1.0, 0.0, 0.0, 0.0]),
        "robot0_gripper_qpos": np.array([0.039, -0.039]),
    }
    observation, frame = prepare_observation(obs)
    np.testing.assert_array_equal(frame, agentview_frame[::-1, ::-1])
    np.testing.assert_array_equal(observation["full_image"], resize_image_for_policy(agentview_frame[::-1, ::-1]))
    np.testing.assert_array_equal(observation["wrist_image"], resize_image_for_policy(wrist_frame[::-1, ::-1]))
    np.testing.assert_allclose(observation["state"], [-0.2, 0.01, 1.19, math.pi, 0.0, 0.0, 0.039, -0.039])
    np.testing.assert_array_equal(robot_state(obs), observation["state"])


def test_video_name_shortens_the_task_like_upstream() -> None:
    name = video_file_name(3, 12, True, "Pick up the black bowl. Then place it\non the plate next to the ramekin")
    assert name == "task=3--episode=12--success=True--pick_up_the_black_bowl__then_place_it_on_the_plate.mp4"


def test_fingerprint_names_the_versions_that_explain_reproductions() -> None:
    fingerprint = environment_fingerprint()
    for key in ("python", "torch", "transformers", "mujoco", "robosuite", "gpu", "MUJOCO_GL"):
        assert fingerprint[key]
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", fingerprint["mujoco"])
