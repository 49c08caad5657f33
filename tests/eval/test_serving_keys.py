"""A LeRobot checkpoint's cameras keep their dataset names; openpi's short LIBERO keys reach them by camera order."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.robot.serving.config import ServeConfig, observation_spec
from experiments.robot.serving.observation import ObservationError
from prismatic.vla.policy_config import EmbodimentConfig, PolicyConfig

LEROBOT_CAMERAS = ["observation.images.image", "observation.images.wrist_image"]


def lerobot_policy_config() -> PolicyConfig:
    embodiment = EmbodimentConfig(name="lerobot", camera_names=LEROBOT_CAMERAS, gripper="none")
    return PolicyConfig(embodiment=embodiment, num_images_in_input=2, use_proprio=True)


def test_openpis_short_camera_keys_reach_a_lerobot_checkpoints_cameras_in_order():
    spec = observation_spec(ServeConfig(pretrained_checkpoint="unused"), lerobot_policy_config())
    front, wrist = np.zeros((32, 32, 3), np.uint8), np.ones((32, 32, 3), np.uint8)
    request = {"observation/image": front, "observation/wrist_image": wrist, "observation/state": np.zeros(8)}
    observation, _ = spec.parse({**request, "prompt": "pick"})
    assert observation["full_image"] is front and observation["wrist_image"] is wrist
    # The checkpoint's own keys still work, and a missing camera names both of its keys.
    own = {"observation/observation.images.image": front, "observation/observation.images.wrist_image": wrist}
    assert spec.parse({**own, "observation/state": np.zeros(8), "prompt": "pick"})[0]["wrist_image"] is wrist
    with pytest.raises(ObservationError, match=r"also as \['observation/image', 'observation/wrist_image'\]"):
        spec.parse({"observation/image": front, "observation/state": np.zeros(8), "prompt": "pick"})
    assert spec.describe() == (
        "observation/observation.images.image (or observation/image), observation/observation.images.wrist_image "
        "(or observation/wrist_image), observation/state, prompt"
    )


def test_explicit_camera_keys_accept_only_those_keys():
    cfg = ServeConfig(pretrained_checkpoint="unused", camera_keys=["cam/front", "cam/hand"])
    spec = observation_spec(cfg, lerobot_policy_config())
    frame = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ObservationError, match=r"missing key\(s\) \['cam/front', 'cam/hand'\]"):
        spec.parse(
            {
                "observation/image": frame,
                "observation/wrist_image": frame,
                "observation/state": np.zeros(8),
                "prompt": "pick",
            }
        )
