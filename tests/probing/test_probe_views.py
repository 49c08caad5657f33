"""Probing a policy that reads fewer cameras than the probe data holds: its leading views, one count per comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prismatic.models.family import CheckedCheckpoint
from prismatic.probing.data import ProbeData, ScenePlan
from prismatic.probing.depth_probe import compared_camera_count
from prismatic.probing.features import check_preprocessing
from prismatic.util.cli import UserError
from prismatic.vla.policy_config import ImagePreprocessingConfig, PolicyConfig


def _data(views: int) -> ProbeData:
    scenes = [ScenePlan(f"s{i}", "libero_spatial", 3, i, 0, "train", "pick") for i in range(2)]
    rgb = np.arange(2 * views * 4 * 4 * 3, dtype=np.uint8).reshape(2, views, 4, 4, 3)
    depth = np.arange(2 * views * 16, dtype=np.float32).reshape(2, views, 4, 4)
    meta = {"preprocessing": {"image_size": 224, "center_crop": False, "crop_area": 0.9}}
    return ProbeData(scenes, rgb, depth, np.zeros((2, 8)), meta)


def _checked(cameras: int, name: str = "ckpt") -> CheckedCheckpoint:
    config = PolicyConfig(num_images_in_input=cameras, image=ImagePreprocessingConfig(center_crop=False))
    return CheckedCheckpoint(Path(name), config, {})


def test_leading_views_keep_the_primary_camera_of_every_scene():
    data = _data(views=2)
    primary = data.leading_views(1)
    assert primary.rgb.shape == (2, 1, 4, 4, 3) and primary.depth.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(primary.rgb[:, 0], data.rgb[:, 0])
    np.testing.assert_array_equal(primary.depth[:, 0], data.depth[:, 0])
    assert primary.scenes == data.scenes


def test_a_one_camera_policy_fits_two_view_data_and_a_three_camera_one_is_refused():
    data = _data(views=2)
    check_preprocessing(_checked(1).policy_config, data, "one-camera")
    with pytest.raises(UserError, match="reads 3 camera\\(s\\); the probe data has only 2 views per scene"):
        check_preprocessing(_checked(3).policy_config, data, "three-camera")


def test_checkpoints_of_different_camera_counts_are_not_compared():
    assert compared_camera_count([_checked(1, "a"), _checked(1, "b")]) == 1
    with pytest.raises(UserError, match="different numbers of cameras \\{'a': 1, 'b': 2\\}"):
        compared_camera_count([_checked(1, "a"), _checked(2, "b")])
