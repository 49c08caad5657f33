"""Policy-side image preprocessing, reproducing upstream's TensorFlow chain with numpy and PIL.

Upstream OpenVLA-OFT prepares every camera frame for the policy with TensorFlow ops. Rendering processes must
never import TensorFlow (it segfaults next to Mesa), so this module re-implements each op from its definition:

1. ``rotate_180``          ``img[::-1, ::-1]`` (LIBERO renders upside down).
2. ``jpeg_round_trip``     ``tf.image.encode_jpeg`` (quality 95, 4:2:0) + ``tf.io.decode_image``.
3. ``resize_lanczos3``     ``tf.image.resize(method="lanczos3", antialias=True)``, then round and clip to uint8.
4. ``center_crop_image``   centered box of 90% area, ``tf.image.crop_and_resize`` (bilinear) back to 224 x 224, with
                           ``tf.image.convert_image_dtype`` on both sides.

Steps 1, 2 and 4 match TensorFlow bit for bit and step 3 to float32 rounding (a uint8 level flips where a value
sits on a .5 boundary). For step 2, PIL encodes with TensorFlow's libjpeg quantisation, and simplejpeg decodes with
libjpeg-turbo's fast integer IDCT, which is what TensorFlow's default ``dct_method=""`` runs (PIL only offers the
accurate IDCT, one uint8 level off on average). tests/eval/test_image_utils.py pins the tolerance of the chain.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import simplejpeg
from PIL import Image

OPENVLA_IMAGE_SIZE = 224
JPEG_QUALITY = 95  # tf.image.encode_jpeg default
CENTER_CROP_AREA = 0.9  # area of the centered crop, as in training's random_resized_crop scale
LANCZOS_RADIUS = 3


def check_image_format(image: np.ndarray, name: str = "image") -> None:
    """Raise unless ``image`` is a uint8 array of shape (H, W, 3)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        found = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}"
        raise ValueError(f"{name}: expected a uint8 numpy array of shape (H, W, 3), found {found}")


def rotate_180(image: np.ndarray) -> np.ndarray:
    """Rotate by 180 degrees (flip both axes), as upstream does to every LIBERO camera frame."""
    return np.ascontiguousarray(image[::-1, ::-1])


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes with the same quantisation as ``tf.image.encode_jpeg`` (quality 95, 4:2:0 chroma subsampling)."""
    check_image_format(image)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    return buffer.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """Decode JPEG bytes to uint8 RGB as ``tf.io.decode_image`` does (fast integer IDCT, fancy upsampling)."""
    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=False)


def jpeg_round_trip(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Encode to JPEG and decode again, mimicking the compression the RLDS training images went through."""
    return decode_jpeg(encode_jpeg(image, quality))


def _lanczos3(x: np.ndarray) -> np.ndarray:
    """TensorFlow's Lanczos kernel of radius 3 (exactly 1 within 1e-3 of the origin)."""
    x = np.abs(x)
    safe_x = np.where(x <= 1e-3, 1.0, x)
    value = LANCZOS_RADIUS * np.sin(np.pi * safe_x) * np.sin(np.pi * safe_x / LANCZOS_RADIUS) / (np.pi * safe_x) ** 2
    return np.where(x <= 1e-3, 1.0, np.where(x > LANCZOS_RADIUS, 0.0, value))


class ResampleWeightCache:
    """Least-recently-used resampling matrices of ``compute(input_size, output_size)``, at most ``max_bytes`` in all
    (a matrix larger than that is computed each time); safe to share between threads. Matrices are read-only."""

    def __init__(self, max_bytes: int, compute: Callable[[int, int], np.ndarray]):
        self.max_bytes = max_bytes
        self._compute = compute
        self._entries: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(weights.nbytes for weights in self._entries.values())

    def get(self, input_size: int, output_size: int) -> np.ndarray:
        key = (input_size, output_size)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        weights = self._compute(input_size, output_size)
        if weights.nbytes <= self.max_bytes:
            with self._lock:
                self._entries[key] = weights
                while sum(entry.nbytes for entry in self._entries.values()) > self.max_bytes:
                    self._entries.popitem(last=False)
        return weights


def _lanczos3_weights(input_size: int, output_size: int) -> np.ndarray:
    """The matrix :func:`lanczos3_weights` returns, computed."""
    scale = output_size / input_size
    kernel_scale = max(1.0 / scale, 1.0)
    support = LANCZOS_RADIUS * kernel_scale
    weights = np.zeros((output_size, input_size), dtype=np.float64)
    for out_index in range(output_size):
        sample = (out_index + 0.5) / scale
        first = min(max(math.ceil(sample - support - 0.5), 0), input_size - 1)
        last = min(max(math.floor(sample + support - 0.5), 0), input_size - 1)
        taps = np.arange(first, last + 1)
        row = _lanczos3((taps + 0.5 - sample) / kernel_scale)
        total = row.sum()
        weights[out_index, taps] = row / total if abs(total) > 0 else row
    weights.flags.writeable = False  # shared by the cache
    return weights


# Enough for every camera size of a robot or two (a 224 x 1024 matrix is 1.8 MB); clients sending other sizes each
# time cannot grow it.
RESAMPLE_WEIGHT_CACHE = ResampleWeightCache(max_bytes=32 * 2**20, compute=_lanczos3_weights)


def lanczos3_weights(input_size: int, output_size: int) -> np.ndarray:
    """Resampling matrix ``[output_size, input_size]`` of TensorFlow's antialiased lanczos3 resize along one axis
    (read-only, cached in ``RESAMPLE_WEIGHT_CACHE``).

    Follows ``tf.raw_ops.ScaleAndTranslate`` with translation 0: sample points at pixel centres, the kernel widened
    by ``1 / scale`` when downsampling, taps clamped to the image and each row normalised to sum 1.
    """
    return RESAMPLE_WEIGHT_CACHE.get(input_size, output_size)


def resize_lanczos3(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased lanczos3 resize of an (H, W, C) image to ``size`` = (height, width); float64, not clipped."""
    height_weights = lanczos3_weights(image.shape[0], size[0])  # [h, H]
    width_weights = lanczos3_weights(image.shape[1], size[1])  # [w, W]
    return np.einsum("hH,HWc,wW->hwc", height_weights, image.astype(np.float64), width_weights, optimize=True)


def _bilinear_weights(input_size: int, output_size: int) -> np.ndarray:
    """Resampling matrix ``[output_size, input_size]`` of ``tf.image.resize(method="bilinear", antialias=False)``
    along one axis: half-pixel centres, the two nearest taps clamped to the image."""
    sample = (np.arange(output_size) + 0.5) * (input_size / output_size) - 0.5
    low = np.floor(sample)
    lerp = sample - low
    weights = np.zeros((output_size, input_size), dtype=np.float64)
    rows = np.arange(output_size)
    np.add.at(weights, (rows, np.clip(low, 0, input_size - 1).astype(np.int64)), 1.0 - lerp)
    np.add.at(weights, (rows, np.clip(low + 1, 0, input_size - 1).astype(np.int64)), lerp)
    weights.flags.writeable = False  # shared by the cache
    return weights


BILINEAR_WEIGHT_CACHE = ResampleWeightCache(max_bytes=32 * 2**20, compute=_bilinear_weights)


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (no antialias) of an (H, W, C) float array to ``size`` = (height, width); float32."""
    height_weights = BILINEAR_WEIGHT_CACHE.get(image.shape[0], size[0])  # [h, H]
    width_weights = BILINEAR_WEIGHT_CACHE.get(image.shape[1], size[1])  # [w, W]
    resized = np.einsum("hH,HWc,wW->hwc", height_weights, image.astype(np.float64), width_weights, optimize=True)
    return resized.astype(np.float32)


def round_to_uint8(image: np.ndarray) -> np.ndarray:
    """Round half to even (``tf.round``), clip to [0, 255] and cast, as upstream does after resizing."""
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def resize_image_for_policy(image: np.ndarray, size: int = OPENVLA_IMAGE_SIZE) -> np.ndarray:
    """JPEG round trip, then antialiased lanczos3 resize to ``size`` x ``size``: the RLDS training pipeline's chain."""
    check_image_format(image)
    return round_to_uint8(resize_lanczos3(jpeg_round_trip(image), (size, size)))


def crop_and_resize_bilinear(image: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """``tf.image.crop_and_resize`` of one float32 (H, W, C) image with a normalised box (y1, x1, y2, x2).

    Sample coordinates and interpolation are computed in float32 in TensorFlow's order, so results match bit for bit.
    """
    y1, x1, y2, x2 = (np.float32(v) for v in box)

    def sample_positions(start: np.float32, end: np.float32, length: int) -> tuple[np.ndarray, ...]:
        step = (end - start) * np.float32(length - 1) / np.float32(size - 1)
        positions = start * np.float32(length - 1) + np.arange(size, dtype=np.float32) * step  # [size]
        if positions.min() < 0 or positions.max() > length - 1:
            raise ValueError(f"crop box {box} reaches outside the image; expected coordinates within [0, 1]")
        low = np.floor(positions)
        return low.astype(np.int64), np.ceil(positions).astype(np.int64), (positions - low).astype(np.float32)

    top, bottom, y_lerp = sample_positions(y1, y2, image.shape[0])
    left, right, x_lerp = sample_positions(x1, x2, image.shape[1])
    x_lerp = x_lerp[None, :, None]
    top_row = image[top][:, left] + (image[top][:, right] - image[top][:, left]) * x_lerp  # [size, size, C]
    bottom_row = image[bottom][:, left] + (image[bottom][:, right] - image[bottom][:, left]) * x_lerp
    return top_row + (bottom_row - top_row) * y_lerp[:, None, None]


def center_crop_box(crop_area: float = CENTER_CROP_AREA) -> tuple[float, float, float, float]:
    """Normalised centered box (y1, x1, y2, x2) of relative area ``crop_area`` and aspect ratio 1, in float32."""
    side = np.clip(np.sqrt(np.float32(crop_area)), 0, 1).astype(np.float32)
    offset = (np.float32(1) - side) / np.float32(2)
    return (offset, offset, offset + side, offset + side)


def center_crop_image(image: np.ndarray, crop_area: float = CENTER_CROP_AREA) -> np.ndarray:
    """Center crop of ``crop_area`` of the image, resized back to 224 x 224 (uint8 in, uint8 out).

    Matches upstream's ``center_crop_image``: ``convert_image_dtype`` to float32 (x / 255), bilinear
    ``crop_and_resize``, clip to [0, 1], ``convert_image_dtype`` back (x * 255.5, truncated).
    """
    check_image_format(image)
    pixels = image.astype(np.float32) * np.float32(1.0 / 255)
    cropped = crop_and_resize_bilinear(pixels, center_crop_box(crop_area), OPENVLA_IMAGE_SIZE)
    scaled = np.clip(cropped, 0, 1) * np.float32(255.5)
    return np.clip(scaled, 0, 255).astype(np.uint8)
