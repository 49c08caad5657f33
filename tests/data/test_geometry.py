"""Point maps follow the image: the augmentation's crop box is applied to the depth too (TF and numpy paths)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.robot.image_utils import encode_jpeg, resize_lanczos3, round_to_uint8
from prismatic.vla.datasets.augmentation import apply_augmentation, sample_params
from prismatic.vla.datasets.config import ImageAugConfig
from prismatic.vla.datasets.geometry import check_depth_follows_crop, points_from_depth
from prismatic.vla.datasets.lerobot_dataset import LeRobotDataset

SOURCE = 48
OUTPUT = (32, 32)
# A large, independently drawn crop and no colour change, so the image's pixel values still say where they came from.
AUG = ImageAugConfig(
    random_resized_crop_scale=(0.4, 0.6),
    brightness_max_delta=0.0,
    contrast_range=(1.0, 1.000001),  # TensorFlow needs upper > lower
    saturation_range=(1.0, 1.000001),
    hue_max_delta=0.0,
    crop_independent_draws=True,
)
# Unit depth and focal length, principal point at the origin: a point's (x, y) is its source pixel's (col, row).
IDENTITY_INTRINSICS = np.eye(3, dtype=np.float32)


def _ramp_image() -> np.ndarray:
    """Red encodes the source column, green the source row (0..255 across the image)."""
    ramp = np.arange(SOURCE, dtype=np.float64) * 255 / (SOURCE - 1)
    rows, cols = np.meshgrid(ramp, ramp, indexing="ij")
    return np.stack([cols, rows, np.zeros_like(rows)], axis=-1).round().astype(np.uint8)


def _check_points_follow_image(image: np.ndarray, points: np.ndarray) -> None:
    """The source coordinates read from the image's colours and from the points agree (to JPEG/resampling error)."""
    from_image = image[..., :2].astype(np.float64) / 255  # (col, row) / (SOURCE - 1)
    from_points = points[..., :2] / (SOURCE - 1)
    inner = (slice(2, -2), slice(2, -2))  # lanczos3 (image) and bilinear (points) differ only at the borders
    assert np.abs(from_image[inner] - from_points[inner]).max() < 0.03
    assert np.ptp(from_points[..., 0]) < 0.85  # the crop did cut: the points do not span the whole source


def test_tf_frame_transform_crops_points_with_the_image_box():
    from prismatic.vla.datasets.tf_runtime import import_tensorflow
    from prismatic.vla.datasets.transforms import make_frame_transform

    tf = import_tensorflow()
    transform = make_frame_transform(("primary",), OUTPUT, AUG, seed=11, with_camera_points=True)
    depth = np.ones((1, SOURCE, SOURCE), np.float32)
    boxes = []
    for sample_index in range(4):
        frame = {
            "observation": {
                "image_primary": tf.constant([encode_jpeg(_ramp_image())]),
                "depth_primary": tf.constant(depth),
                "intrinsics_primary": tf.constant(IDENTITY_INTRINSICS[None]),
                "proprio": tf.zeros([1, 8]),
            }
        }
        observation = transform(tf.constant(sample_index, tf.int64), frame)["observation"]
        assert "depth_primary" not in observation and "intrinsics_primary" not in observation
        points = observation["points_primary"].numpy()[0]
        assert points.shape == (*OUTPUT, 3) and points.dtype == np.float32
        _check_points_follow_image(observation["image_primary"].numpy()[0], points)
        boxes.append(points[0, 0, :2].tolist())
    assert len({tuple(np.round(box, 1)) for box in boxes}) > 1  # the boxes differ between samples


def test_lerobot_point_maps_follow_the_image_crop():
    """``LeRobotDataset.camera_points`` against the image chain of ``frame_at`` with the same parameters."""
    dataset = LeRobotDataset.__new__(LeRobotDataset)  # only the per-camera depth path; its source is stood in for

    class Source:
        mapping = type("Mapping", (), {"depth_keys": ("depth",), "intrinsics_keys": ("k",)})
        intrinsics = {"k": IDENTITY_INTRINSICS[None]}

        @staticmethod
        def depth_at(key: str, row: int) -> np.ndarray:
            return np.ones((SOURCE, SOURCE), np.float32)

    dataset.source = Source()
    dataset.config = type("Config", (), {"resize_resolution": OUTPUT})
    for sample_index in range(4):
        params = sample_params(AUG, seed=5, sample_index=sample_index, camera_index=0)
        image = apply_augmentation(round_to_uint8(resize_lanczos3(_ramp_image(), OUTPUT)), params)
        _check_points_follow_image(image, dataset.camera_points(0, 0, params))


def test_points_from_depth_back_projects_through_the_intrinsics():
    depth = np.full((2, 3), 2.0, np.float32)
    intrinsics = np.array([[4.0, 0, 1.0], [0, 8.0, 0.5], [0, 0, 1]], np.float32)
    points = points_from_depth(depth, intrinsics)
    np.testing.assert_allclose(points[1, 2], [(2 - 1.0) / 4 * 2, (1 - 0.5) / 8 * 2, 2.0])
    np.testing.assert_allclose(points[0, 0], [-0.5, -0.125, 2.0])


def test_depth_of_another_aspect_ratio_cannot_follow_the_crop():
    check_depth_follows_crop((256, 256), (128, 128), "depth")
    with pytest.raises(ValueError, match="'depth' is 120x160 but its image is 256x256"):
        check_depth_follows_crop((256, 256), (120, 160), "'depth'")
