"""The training image augmentation without TensorFlow (LeRobot path): numpy versions of the TF ops used by
``transforms.augment_image``, same order, same parameter distributions (``ImageAugConfig``).

Each op follows TensorFlow's definition (``crop_and_resize`` bilinear, ``adjust_brightness``/``contrast``/
``saturation``/``hue`` in float [0, 1] with clipping after each op, ``convert_image_dtype`` back with saturation);
tests/data/test_lerobot.py checks them against the TF ops for the same parameters. The random draws come from numpy,
keyed by (seed, sample index, camera), so a sample's augmentation does not depend on the samples drawn before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prismatic.vla.datasets.config import ImageAugConfig
from prismatic.vla.image_utils import crop_and_resize_bilinear


@dataclass(frozen=True)
class AugmentationParams:
    crop_box: tuple[float, float, float, float]  # normalised (y1, x1, y2, x2)
    brightness_delta: float
    contrast_factor: float
    saturation_factor: float
    hue_delta: float


def sample_params(aug: ImageAugConfig, seed: int, sample_index: int, camera_index: int) -> AugmentationParams:
    """The augmentation of camera ``camera_index`` of sample ``sample_index`` (upstream's distributions)."""
    rng = np.random.default_rng([seed, sample_index, camera_index])
    # One uniform number fixes the crop box unless independent draws are asked for (upstream's dlimp quirk, as in
    # ``transforms.random_resized_crop``).
    scale_u, ratio_u, height_u, width_u = rng.uniform(size=4) if aug.crop_independent_draws else [rng.uniform()] * 4
    (low_scale, high_scale), (low_ratio, high_ratio) = aug.random_resized_crop_scale, aug.random_resized_crop_ratio
    area = low_scale + (high_scale - low_scale) * scale_u
    log_ratio = np.log(low_ratio) + (np.log(high_ratio) - np.log(low_ratio)) * ratio_u
    height = min(np.sqrt(area / np.exp(log_ratio)), 1.0)
    width = min(np.sqrt(area * np.exp(log_ratio)), 1.0)
    top, left = height_u * (1.0 - height), width_u * (1.0 - width)
    return AugmentationParams(
        crop_box=(top, left, top + height, left + width),
        brightness_delta=rng.uniform(-aug.brightness_max_delta, aug.brightness_max_delta),
        contrast_factor=rng.uniform(*aug.contrast_range),
        saturation_factor=rng.uniform(*aug.saturation_range),
        hue_delta=rng.uniform(-aug.hue_max_delta, aug.hue_max_delta),
    )


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """``tf.image.rgb_to_hsv`` of float [0, 1] RGB: hue in [0, 1)."""
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    value = np.maximum(np.maximum(red, green), blue)
    chroma = value - np.minimum(np.minimum(red, green), blue)
    saturation = np.where(value > 0, chroma / np.where(value > 0, value, 1), 0)
    safe_chroma = np.where(chroma > 0, chroma, 1)
    hue = np.where(
        value == red,
        (green - blue) / safe_chroma,
        np.where(value == green, 2 + (blue - red) / safe_chroma, 4 + (red - green) / safe_chroma),
    )
    hue = np.where(chroma > 0, (hue / 6) % 1.0, 0)
    return np.stack([hue, saturation, value], axis=-1).astype(np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """``tf.image.hsv_to_rgb``."""
    hue, saturation, value = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    sector = hue * np.float32(6) - np.array([3, 2, 4], np.float32)  # [H, W, 3]
    rgb = np.clip(np.abs(sector) * np.array([1, -1, -1], np.float32) + np.array([-1, 2, 2], np.float32), 0, 1)
    return (((rgb - 1) * saturation + 1) * value).astype(np.float32)


def apply_augmentation(image: np.ndarray, params: AugmentationParams) -> np.ndarray:
    """Crop, brightness, contrast, saturation, hue on a square [H, W, 3] uint8 image (uint8 out, same size)."""
    pixels = image.astype(np.float32) * np.float32(1.0 / 255)
    pixels = np.clip(crop_and_resize_bilinear(pixels, params.crop_box, image.shape[0]), 0, 1)
    pixels = np.clip(pixels + np.float32(params.brightness_delta), 0, 1)
    mean = pixels.mean(axis=(0, 1), keepdims=True)
    pixels = np.clip((pixels - mean) * np.float32(params.contrast_factor) + mean, 0, 1)
    # Saturation then hue, in one HSV round trip (TF converts back to RGB in between; HSV -> RGB -> HSV is the
    # identity up to float rounding, so the result agrees to one uint8 level; the parity test checks it).
    hsv = rgb_to_hsv(pixels)
    hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(params.saturation_factor), 0, 1)
    hsv[..., 0] = (hsv[..., 0] + np.float32(params.hue_delta)) % 1.0
    pixels = np.clip(hsv_to_rgb(hsv), 0, 1)
    return np.clip(pixels * np.float32(255.5), 0, 255).astype(np.uint8)
