"""Point maps follow the image: the augmentation's crop box is applied to the depth too (TF and numpy paths)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from prismatic.vla.image_utils import encode_jpeg
from prismatic.testing.depth_data import add_lerobot_depth
from prismatic.util.cli import UserError
from prismatic.vla.datasets.config import ImageAugConfig
from prismatic.vla.datasets.geometry import check_depth_follows_crop, points_from_depth
from prismatic.vla.datasets.lerobot import LeRobotMapping
from prismatic.vla.datasets.lerobot_dataset import LeRobotConfig, LeRobotDataset

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
LEROBOT_FIXTURES = Path(__file__).resolve().parent / "lerobot_fixtures"
LEROBOT_NAME = "libero_like_v30"
CAMERA_KEY = "observation.images.image"
DEPTH_KEY = "observation.images.image_depth"
INTRINSICS_KEY = "observation.images.image_intrinsics"


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


def _lerobot_with_depth(root: Path, depth_shape: tuple[int, int] = (SOURCE, SOURCE)) -> Path:
    """The libero_like_v30 fixture plus a primary-camera depth ([H, W], nested lists as HF ``Array2D`` stores it)
    and intrinsics ([3, 3]) column, declared in ``meta/info.json``."""
    dataset_dir = root / LEROBOT_NAME
    shutil.copytree(LEROBOT_FIXTURES / LEROBOT_NAME, dataset_dir)
    add_lerobot_depth(dataset_dir, DEPTH_KEY, INTRINSICS_KEY, np.ones(depth_shape, np.float32), IDENTITY_INTRINSICS)
    return root


def _lerobot_config(root: Path, **overrides) -> LeRobotConfig:
    mapping = LeRobotMapping(camera_keys=(CAMERA_KEY,), depth_keys=(DEPTH_KEY,), intrinsics_keys=(INTRINSICS_KEY,))
    fields = dict(
        data_root_dir=root,
        dataset_name=LEROBOT_NAME,
        mapping=mapping,
        num_images_in_input=1,
        resize_resolution=OUTPUT,
        image_aug=True,
        image_aug_config=AUG,
        with_camera_points=True,
        statistics_cache_dir=root / "cache",
    )
    return LeRobotConfig(**{**fields, **overrides})


def test_lerobot_frames_carry_point_maps_cropped_like_their_images(tmp_path, monkeypatch):
    dataset = LeRobotDataset(_lerobot_config(_lerobot_with_depth(tmp_path)), batch_transform=lambda frame: frame)
    monkeypatch.setattr(dataset, "decode_image", lambda camera, row: _ramp_image())  # pixels that name their place
    for sample_index, row in enumerate(dataset.rows[[0, 7, 30, -1]].tolist()):  # rows that start a chunk
        observation = dataset.frame_at(row, sample_index)["observation"]
        points = observation["points_primary"][0]
        assert points.shape == (*OUTPUT, 3) and points.dtype == np.float32
        _check_points_follow_image(observation["image_primary"][0], points)
    assert dataset.policy_data()["depth_keys"] == [DEPTH_KEY]


def test_lerobot_depth_problems_are_named(tmp_path):
    root = _lerobot_with_depth(tmp_path / "wide", depth_shape=(SOURCE, 2 * SOURCE))
    with pytest.raises(UserError, match=f"'{DEPTH_KEY}' is 48x96 but its image is 32x32: the image crop cannot"):
        LeRobotDataset(_lerobot_config(root), batch_transform=lambda frame: frame)
    root = _lerobot_with_depth(tmp_path / "plain")
    without_depth = _lerobot_config(root, mapping=LeRobotMapping(camera_keys=(CAMERA_KEY,)))
    with pytest.raises(UserError, match="--teacher geometry needs depth.*--lerobot_depth_keys"):
        LeRobotDataset(without_depth, batch_transform=lambda frame: frame)
    unknown = LeRobotMapping(camera_keys=(CAMERA_KEY,), depth_keys=("depth",), intrinsics_keys=(INTRINSICS_KEY,))
    with pytest.raises(UserError, match="feature 'depth' \\(--lerobot_depth_keys\\) is missing"):
        LeRobotDataset(_lerobot_config(root, mapping=unknown), batch_transform=lambda frame: frame)


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


def _find(node: object, key: str) -> dict | None:
    """The first dict under ``key`` anywhere in a JSON tree."""
    if isinstance(node, dict):
        if key in node:
            return node[key]
        children = node.values()
    else:
        children = node if isinstance(node, list) else []
    for child in children:
        found = _find(child, key)
        if found is not None:
            return found
    return None


def test_rlds_depth_of_another_aspect_ratio_is_named_before_reading(tmp_path):
    from prismatic.vla.datasets.registry import DATASETS
    from prismatic.vla.datasets.rlds import open_builder
    from prismatic.vla.datasets.synthetic import SyntheticLiberoConfig, write_synthetic_libero

    config = SyntheticLiberoConfig(data_root_dir=tmp_path, num_episodes=1, episode_length=9, image_size=16)
    builder_dir = write_synthetic_libero(SyntheticLiberoConfig(**{**vars(config), "with_depth": True}))
    spec = DATASETS[config.dataset_name]
    open_builder(builder_dir, spec, ("primary", "wrist"), with_camera_points=True)
    features_file = builder_dir / "features.json"
    features = json.loads(features_file.read_text())
    _find(features, "wrist_image_depth")["tensor"]["shape"]["dimensions"] = ["16", "24"]
    features_file.write_text(json.dumps(features))
    with pytest.raises(ValueError, match="'steps/observation/wrist_image_depth' is 16x24 but its image is 16x16"):
        open_builder(builder_dir, spec, ("primary", "wrist"), with_camera_points=True)
    open_builder(builder_dir, spec, ("primary", "wrist"))  # without the geometry teacher the depth is not read


def test_numpy_and_tf_resize_point_maps_alike():
    """Without a crop both paths resize the point map to the same values (numpy ``resize_bilinear`` = TF's)."""
    from prismatic.vla.image_utils import resize_bilinear
    from prismatic.vla.datasets.tf_runtime import import_tensorflow
    from prismatic.vla.datasets.transforms import make_frame_transform

    tf = import_tensorflow()
    depth = 1 + np.random.default_rng(0).uniform(size=(SOURCE, SOURCE)).astype(np.float32)
    intrinsics = np.array([[40.0, 0, 23.5], [0, 40.0, 23.5], [0, 0, 1]], np.float32)
    frame = {
        "observation": {
            "image_primary": tf.constant([encode_jpeg(_ramp_image())]),
            "depth_primary": tf.constant(depth[None]),
            "intrinsics_primary": tf.constant(intrinsics[None]),
            "proprio": tf.zeros([1, 8]),
        }
    }
    transform = make_frame_transform(("primary",), (20, 28), None, seed=0, with_camera_points=True)
    from_tf = transform(tf.constant(0, tf.int64), frame)["observation"]["points_primary"].numpy()[0]
    from_numpy = resize_bilinear(points_from_depth(depth, intrinsics), (20, 28))
    np.testing.assert_allclose(from_tf, from_numpy, atol=1e-5, rtol=0)  # float32 rounding (measured 2.6e-6)
