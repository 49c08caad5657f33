"""The random crop as upstream's dlimp draws it: one uniform number fixes area, aspect and both offsets."""

from __future__ import annotations

import numpy as np
import pytest

from prismatic.vla.datasets.tf_runtime import import_tensorflow
from prismatic.vla.datasets.transforms import random_resized_crop

SIZE = 33


def crop_box(scale, ratio, seed, independent_draws=False) -> np.ndarray:
    """(y1, x1, y2, x2) of the crop, read back from a coordinate-ramp image (bilinear sampling is exact on ramps)."""
    tf = import_tensorflow()
    ys, xs = np.meshgrid(np.arange(SIZE, dtype=np.float32), np.arange(SIZE, dtype=np.float32), indexing="ij")
    image = tf.constant(np.stack([ys, xs, np.zeros_like(ys)], axis=-1) / (SIZE - 1))  # [H, W, 3] in [0, 1]
    cropped = random_resized_crop(image, tf.constant(seed, tf.int64), scale, ratio, independent_draws).numpy()
    return np.array([cropped[0, 0, 0], cropped[0, 0, 1], cropped[-1, -1, 0], cropped[-1, -1, 1]])


def dlimp_box(scale, ratio, seed) -> np.ndarray:
    """dlimp's random_resized_crop (moojink/dlimp_openvla): four stateless_uniform draws with the same seed."""
    tf = import_tensorflow()
    seed = tf.constant(seed, tf.int64)
    area = tf.random.stateless_uniform((1,), seed, scale[0], scale[1])
    aspect = tf.exp(tf.random.stateless_uniform((1,), seed, np.log(ratio[0]), np.log(ratio[1])))
    height = tf.clip_by_value(tf.sqrt(area / aspect), 0, 1)
    width = tf.clip_by_value(tf.sqrt(area * aspect), 0, 1)
    top = tf.random.stateless_uniform((1,), seed, 0, 1 - height)
    left = tf.random.stateless_uniform((1,), seed, 0, 1 - width)
    return np.array([top[0], left[0], top[0] + height[0], left[0] + width[0]], dtype=np.float32)


@pytest.mark.parametrize("scale, ratio", [((0.9, 0.9), (1.0, 1.0)), ((0.5, 1.0), (0.75, 1.33))])
def test_default_crop_is_dlimps_box(scale, ratio):
    for seed in ([0, 1], [7, 123], [42, 5]):
        np.testing.assert_allclose(crop_box(scale, ratio, seed), dlimp_box(scale, ratio, seed), atol=1e-5)


def test_libero_crops_lie_on_the_diagonal_and_larger_crops_sit_further_from_the_corner():
    boxes = np.array([crop_box((0.9, 0.9), (1.0, 1.0), [3, seed]) for seed in range(8)])
    np.testing.assert_allclose(boxes[:, 0], boxes[:, 1], atol=1e-6)  # top offset == left offset
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], np.sqrt(0.9), atol=1e-5)  # area 0.9, square
    assert np.ptp(boxes[:, 0]) > 0.01  # the offset does vary

    varying = np.array([crop_box((0.5, 1.0), (1.0, 1.0), [3, seed]) for seed in range(8)])
    sides = varying[:, 2] - varying[:, 0]
    u = (sides**2 - 0.5) / 0.5  # area = 0.5 + 0.5 u
    np.testing.assert_allclose(varying[:, 0], u * (1 - sides), atol=1e-5)


def test_independent_draws_leave_the_diagonal():
    boxes = np.array([crop_box((0.9, 0.9), (1.0, 1.0), [3, seed], independent_draws=True) for seed in range(8)])
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], np.sqrt(0.9), atol=1e-5)
    assert np.abs(boxes[:, 0] - boxes[:, 1]).max() > 0.005
