"""The TensorFlow-free observation chain against upstream's TensorFlow chain, step by step, on real LIBERO frames.

This process renders nothing, so it may import TensorFlow. Measured on the two fixture frames (256 -> 224):
rotation, JPEG encoding, JPEG decoding (fast IDCT, as TensorFlow's default) and the center crop are exact; lanczos3
differs by float32 rounding (a uint8 level flips for < 0.01% of values). Stated tolerance of the whole chain:
at most 1 uint8 level anywhere, on at most 0.1% of the values.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from prismatic.vla import image_utils

CHAIN_MAX_TOLERANCE = 1  # uint8 levels
CHAIN_DIFFERING_FRACTION = 1e-3


def tf_resize_for_policy(image: np.ndarray, size: int = 224) -> np.ndarray:
    """Upstream's ``resize_image_for_policy``: TF JPEG round trip, lanczos3 antialiased resize, round, clip."""
    decoded = tf.io.decode_image(tf.image.encode_jpeg(image), expand_animations=False, dtype=tf.uint8)
    resized = tf.image.resize(decoded, (size, size), method="lanczos3", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()


def tf_center_crop(image: np.ndarray, crop_area: float = 0.9) -> np.ndarray:
    """Upstream's ``center_crop_image``: float [0, 1], centered box of sqrt(area) sides, crop_and_resize, back."""
    pixels = tf.image.convert_image_dtype(tf.convert_to_tensor(image), tf.float32)
    side = tf.reshape(tf.clip_by_value(tf.sqrt(crop_area), 0, 1), (1,))
    offset = (1 - side) / 2
    boxes = tf.stack([offset, offset, offset + side, offset + side], axis=1)
    cropped = tf.image.crop_and_resize(pixels[None], boxes, tf.range(1), (224, 224))[0]
    return tf.image.convert_image_dtype(tf.clip_by_value(cropped, 0, 1), tf.uint8, saturate=True).numpy()


@pytest.fixture(params=["agentview", "wrist"])
def rotated_frame(request: pytest.FixtureRequest, agentview_frame: np.ndarray, wrist_frame: np.ndarray) -> np.ndarray:
    raw = agentview_frame if request.param == "agentview" else wrist_frame
    return image_utils.rotate_180(raw)


def test_rotate_180_equals_tensorflow_rot90_twice(agentview_frame: np.ndarray) -> None:
    rotated = image_utils.rotate_180(agentview_frame)
    np.testing.assert_array_equal(rotated, tf.image.rot90(agentview_frame, k=2).numpy())
    assert rotated.flags.c_contiguous


def test_jpeg_encoding_quantises_exactly_like_tensorflow(rotated_frame: np.ndarray) -> None:
    # Decoded by one and the same decoder, our bytes and TensorFlow's give identical pixels.
    ours = tf.io.decode_jpeg(image_utils.encode_jpeg(rotated_frame), dct_method="INTEGER_ACCURATE").numpy()
    theirs = tf.io.decode_jpeg(tf.image.encode_jpeg(rotated_frame), dct_method="INTEGER_ACCURATE").numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_jpeg_decoding_equals_tensorflow_default_decoder(rotated_frame: np.ndarray) -> None:
    data = tf.image.encode_jpeg(rotated_frame).numpy()
    # TensorFlow's default (what upstream runs) is libjpeg's fast integer IDCT.
    default = tf.io.decode_image(data, expand_animations=False, dtype=tf.uint8).numpy()
    np.testing.assert_array_equal(image_utils.decode_jpeg(data), default)


@pytest.mark.parametrize("input_size", [256, 128, 64])
def test_lanczos3_resize_matches_tensorflow(rotated_frame: np.ndarray, input_size: int) -> None:
    image = tf.image.resize(rotated_frame, (input_size, input_size), method="nearest").numpy().astype(np.uint8)
    expected = tf.image.resize(image, (224, 224), method="lanczos3", antialias=True).numpy()
    resized = image_utils.resize_lanczos3(image, (224, 224))
    assert np.abs(resized - expected).max() < 0.01  # float32 accumulation in TensorFlow
    rounded_expected = tf.cast(tf.clip_by_value(tf.round(expected), 0, 255), tf.uint8).numpy()
    level_difference = np.abs(image_utils.round_to_uint8(resized).astype(int) - rounded_expected)
    assert level_difference.max() <= 1
    assert (level_difference > 0).mean() < 1e-3


def test_lanczos3_weights_normalised_and_identity_at_same_size() -> None:
    weights = image_utils.lanczos3_weights(256, 224)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    support = 3 * 256 / 224  # the kernel widens by the downsampling factor (antialiasing)
    assert np.ptp(np.flatnonzero(weights[100])) <= 2 * support
    np.testing.assert_allclose(image_utils.lanczos3_weights(224, 224), np.eye(224), atol=1e-12)


def test_center_crop_equals_tensorflow_exactly(rotated_frame: np.ndarray) -> None:
    image = tf_resize_for_policy(rotated_frame)
    np.testing.assert_array_equal(image_utils.center_crop_image(image), tf_center_crop(image))


def test_center_crop_box_is_90_percent_of_the_area() -> None:
    y1, x1, y2, x2 = image_utils.center_crop_box()
    assert (y2 - y1) * (x2 - x1) == pytest.approx(0.9, rel=1e-6)
    assert y1 == x1 == pytest.approx((1 - 0.9**0.5) / 2)


def test_whole_chain_within_stated_tolerance_of_tensorflow(rotated_frame: np.ndarray) -> None:
    ours = image_utils.center_crop_image(image_utils.resize_image_for_policy(rotated_frame))
    theirs = tf_center_crop(tf_resize_for_policy(rotated_frame))
    assert ours.shape == theirs.shape == (224, 224, 3) and ours.dtype == np.uint8
    difference = np.abs(ours.astype(int) - theirs)
    assert difference.max() <= CHAIN_MAX_TOLERANCE
    assert (difference > 0).mean() <= CHAIN_DIFFERING_FRACTION


def test_bad_image_names_the_expected_format() -> None:
    with pytest.raises(ValueError, match=r"uint8 numpy array of shape \(H, W, 3\).*float32"):
        image_utils.resize_image_for_policy(np.zeros((256, 256, 3), dtype=np.float32))
