"""openpi's training augmentation of pi0's images, in torch, on a collated batch (``--model_family pi0
--image_aug True``), and SF-pi0's variant of it.

As openpi's ``preprocess_observation_pytorch(train=True)`` (facts: ``pi0-facts.md`` section 3.8), in [0, 1]:

- cameras whose key does not name a wrist: a random crop of ``int(0.95 x side)`` pixels a side (offsets uniform
  over the integers), resized back bilinearly, then a rotation about the centre by U(-5, 5) degrees (bilinear,
  black outside the frame; none when the angle is within 0.1 degree);
- every camera: brightness x U(0.7, 1.3); contrast x U(0.6, 1.4) about each image's mean (over its channels and
  pixels); saturation x U(0.5, 1.5) about each pixel's mean over the channels; then a clamp to [0, 1].

One draw per camera per batch, shared by all its samples. The draws come from a generator seeded by (the run's
seed, rank, batch index), so a batch's augmentation does not depend on the batches before it and a resumed run
draws what the uninterrupted one drew.

SF-pi0 (openpi-SF's ``get_wo_aug``): the teacher reads the copy taken before colour augmentation, and geometric
augmentation is off for every camera, so the student trains with colour augmentation only and its pixels stay
where the teacher's (and the geometry teacher's point maps) are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prismatic.models.pi0.configuration_pi0 import Pi0Config
from prismatic.util.seeds import derive_seed
from prismatic.vla.policy_config import NO_AUGMENTATION, OPENPI_AUGMENTATION, OPENPI_COLOUR_AUGMENTATION

CROP_FRACTION = 0.95
MAX_ROTATION_DEGREES = 5.0
MIN_ROTATION_DEGREES = 0.1  # openpi rotates only when |angle| exceeds this
BRIGHTNESS_RANGE = (0.7, 1.3)
CONTRAST_RANGE = (0.6, 1.4)
SATURATION_RANGE = (0.5, 1.5)
SEED_PURPOSE = 5  # derive_seed's purpose slot (the data pipelines use 0-4)


@dataclass(frozen=True)
class CameraDraw:
    """One camera's augmentation for one batch: the crop's top-left corner and the rotation (None: no geometric
    augmentation), and the colour factors."""

    crop_corner: tuple[int, int] | None
    angle_degrees: float | None
    brightness: float
    contrast: float
    saturation: float


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    """U(low, high) as openpi draws it: ``low + rand x (high - low)`` in float32."""
    return (low + torch.rand(1, generator=generator) * (high - low)).item()


def draw_camera(generator: torch.Generator, image_size: int, geometric: bool) -> CameraDraw:
    """One camera's draw, in openpi's order: crop rows, crop columns, angle (geometric cameras only), brightness,
    contrast, saturation."""
    crop_corner = angle = None
    if geometric:
        slack = image_size - int(image_size * CROP_FRACTION)
        crop_corner = tuple(int(torch.randint(0, slack + 1, (1,), generator=generator)) for _ in range(2))
        angle = uniform(generator, -MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)
    return CameraDraw(
        crop_corner,
        angle,
        uniform(generator, *BRIGHTNESS_RANGE),
        uniform(generator, *CONTRAST_RANGE),
        uniform(generator, *SATURATION_RANGE),
    )


def crop_and_rotate(images: Tensor, draw: CameraDraw) -> Tensor:
    """The geometric part on ``images`` ``[B, 3, S, S]`` in [0, 1]: the crop resized back, then the rotation (the
    sampling grid spans the pixel centres from -1 to 1 and is read with ``align_corners=False``, as openpi's)."""
    size = images.shape[-1]
    crop = int(size * CROP_FRACTION)
    top, left = draw.crop_corner
    cropped = images[..., top : top + crop, left : left + crop]
    images = F.interpolate(cropped, size=(size, size), mode="bilinear", align_corners=False)
    if abs(draw.angle_degrees) <= MIN_ROTATION_DEGREES:
        return images
    cos, sin = math.cos(math.radians(draw.angle_degrees)), math.sin(math.radians(draw.angle_degrees))
    rotation = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=images.dtype).expand(len(images), 2, 3)
    grid = F.affine_grid(rotation, list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def adjust_colour(images: Tensor, draw: CameraDraw) -> Tensor:
    """The colour part on ``images`` ``[B, 3, S, S]`` in [0, 1]: brightness, contrast about each image's mean,
    saturation about each pixel's channel mean, clamp."""
    images = images * draw.brightness
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * draw.contrast + mean
    gray = images.mean(dim=1, keepdim=True)
    return (gray + (images - gray) * draw.saturation).clamp(0.0, 1.0)


def augment_images(
    images: Tensor, geometric_cameras: Sequence[bool], generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``images`` ``[B, N, 3, S, S]`` in [-1, 1] augmented (camera n geometrically when ``geometric_cameras[n]``),
    and the copy taken before colour augmentation (a camera without geometric augmentation: its input, bit for
    bit)."""
    augmented, before_colour = [], []
    for camera, geometric in enumerate(geometric_cameras):
        draw = draw_camera(generator, images.shape[-1], geometric)
        pixels = images[:, camera]
        if geometric:
            pixels = crop_and_rotate(pixels / 2.0 + 0.5, draw) * 2.0 - 1.0
        before_colour.append(pixels)
        augmented.append(adjust_colour(pixels / 2.0 + 0.5, draw) * 2.0 - 1.0)
    return torch.stack(augmented, dim=1), torch.stack(before_colour, dim=1)


def augmentation_record(image_aug: bool, spatial_forcing: bool) -> str:
    """What ``--image_aug`` does to a pi0 run's images: ``none``, ``openpi`` (crop and rotation of the non-wrist
    cameras, colour) or, with Spatial Forcing, ``openpi_colour`` (colour only)."""
    if not image_aug:
        return NO_AUGMENTATION
    return OPENPI_COLOUR_AUGMENTATION if spatial_forcing else OPENPI_AUGMENTATION


@dataclass(frozen=True)
class Pi0Augmentation:
    """openpi's augmentation of one rank's training batches, each batch's draw keyed by (``seed``, ``rank``, its
    index); ``geometric_cameras`` says per camera whether it is cropped and rotated."""

    seed: int
    rank: int
    geometric_cameras: tuple[bool, ...]

    @classmethod
    def for_run(cls, config: Pi0Config, seed: int, rank: int, spatial_forcing: bool) -> Pi0Augmentation:
        """openpi's (crop and rotation for the cameras of ``config.image_keys`` not named ``wrist``) or, with
        ``spatial_forcing``, SF-pi0's (colour only)."""
        return cls(seed, rank, tuple(not spatial_forcing and "wrist" not in key for key in config.image_keys))

    def __call__(self, images: Tensor, batch_index: int) -> tuple[Tensor, Tensor]:
        """Batch ``batch_index``'s images augmented, and their copy before colour augmentation (both
        ``[B, N, 3, S, S]`` in [-1, 1])."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.rank, batch_index, SEED_PURPOSE))
        return augment_images(images, self.geometric_cameras, generator)
