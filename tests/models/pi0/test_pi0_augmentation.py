"""pi0's training augmentation (openpi's, in pi0's collator): SF-pi0's colour-only variant keeps the teacher's copy
bit for bit and the pixels in place, each camera draws once per batch within openpi's ranges, a batch's draw depends
only on the run's seed, rank and the batch's index (so a resumed run draws the same), the rotation samples openpi's
grid, and the rgb and geometry teachers read the un-augmented frames."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from prismatic.models.pi0.augmentation_pi0 import (
    BRIGHTNESS_RANGE,
    CONTRAST_RANGE,
    CROP_FRACTION,
    MAX_ROTATION_DEGREES,
    SATURATION_RANGE,
    CameraDraw,
    Pi0Augmentation,
    crop_and_rotate,
    draw_camera,
)
from prismatic.models.pi0.configuration_pi0 import Pi0Config
from prismatic.models.pi0.processing_pi0 import IMAGES_BEFORE_COLOUR, Pi0Collator
from prismatic.models.pi0.spatial_forcing_pi0 import pi0_align_config, pi0_teacher_images
from prismatic.spatial_forcing import GeometryTeacher, RGBTeacher, SpatialForcingAligner
from prismatic.testing.pi0_tiny import golden_pi0, tiny_pi0_config
from prismatic.training.pi0_training import pi0_losses

SQUARE = (slice(10, 30), slice(12, 40))  # rows, columns of a grey square on black, in pi0's 56 px frames


def square_samples(config: Pi0Config, count: int = 2) -> list[dict[str, torch.Tensor]]:
    """``count`` training samples whose every camera shows a grey square (0.6 in [0, 1]) on black."""
    size, cameras = config.image_size, config.num_cameras
    images = torch.full((cameras, 3, size, size), -1.0)
    images[:, :, SQUARE[0], SQUARE[1]] = 0.2
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "images": images.clone(),
            "image_masks": torch.ones(cameras, dtype=torch.bool),
            "letterbox_masks": torch.ones(cameras, size, size, dtype=torch.bool),
            "lang_tokens": torch.randint(1, config.vocab_size, (config.tokenizer_max_length,), generator=generator),
            "lang_masks": torch.arange(config.tokenizer_max_length) < 5,
            "state": torch.randn(config.max_state_dim, generator=generator),
            "actions": torch.randn(config.chunk_size, config.max_action_dim, generator=generator),
            "camera_points": torch.randn(cameras, size, size, 3, generator=generator),
        }
        for _ in range(count)
    ]


def square_masks(images: torch.Tensor) -> torch.Tensor:
    """``[B, N, S, S]``: the pixels whose colour (all channels) equals the colour at the square's centre."""
    centre = images[:, :, :, 20, 26][..., None, None]
    return (images == centre).all(dim=2)


def collate(config: Pi0Config, spatial_forcing: bool, batch_index: int = 0) -> tuple[dict, dict]:
    """(The un-augmented batch, the augmented batch ``batch_index`` of a run with seed 7, rank 0)."""
    augmentation = Pi0Augmentation.for_run(config, seed=7, rank=0, spatial_forcing=spatial_forcing)
    samples = square_samples(config)
    return default_collate(samples), Pi0Collator(augmentation, next_batch=batch_index)(samples)


def test_spatial_forcing_augments_colour_only_and_keeps_the_teachers_copy_bit_for_bit():
    config = tiny_pi0_config()  # pi0's cameras: base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb
    plain, augmented = collate(config, spatial_forcing=True)
    assert torch.equal(augmented[IMAGES_BEFORE_COLOUR], plain["images"])
    change = (augmented["images"] - plain["images"]).abs().amax(dim=(0, 2, 3, 4))
    assert (change > 0.05).all(), change  # every camera's colours moved
    square = torch.zeros(56, 56, dtype=torch.bool)
    square[SQUARE] = True
    assert (square_masks(augmented["images"]) == square).all()  # no pixel moved
    for name in ("camera_points", "letterbox_masks", "state", "actions"):
        assert torch.equal(augmented[name], plain[name]), name

    _, full = collate(config, spatial_forcing=False)  # openpi's: the third-person camera is cropped and rotated too
    moved = (square_masks(full["images"]) != square).flatten(2).sum(-1)
    assert (moved[:, 0] > 20).all() and (moved[:, 1:] == 0).all(), moved  # the wrist cameras are not


def test_one_draw_per_camera_per_batch_within_openpis_ranges():
    config = tiny_pi0_config()
    grey = torch.zeros(2, config.num_cameras, 3, 8, 8)  # 0.5 in [0, 1]: only the brightness changes a flat image
    augmentation = Pi0Augmentation.for_run(config, seed=7, rank=0, spatial_forcing=True)
    factors = torch.stack([(augmentation(grey, index)[0] + 1.0) / 2.0 / 0.5 for index in range(200)])
    torch.testing.assert_close(factors, factors[..., :1, :1, :1].expand_as(factors), rtol=0, atol=1e-6)
    per_camera = factors[:, :, :, 0, 0, 0]  # [batches, samples, cameras]
    assert torch.equal(per_camera[:, 0], per_camera[:, 1])  # shared by the samples of a batch
    assert (per_camera[:, 0, 0] != per_camera[:, 0, 1]).all() and (per_camera[:, 0, 1] != per_camera[:, 0, 2]).all()
    low, high = BRIGHTNESS_RANGE
    assert low - 1e-6 <= per_camera.min() < low + 0.02 and high - 0.02 < per_camera.max() <= high + 1e-6

    draws = [draw_camera(torch.Generator().manual_seed(seed), 224, geometric=True) for seed in range(500)]
    slack = 224 - int(224 * CROP_FRACTION)
    assert {corner for draw in draws for corner in draw.crop_corner} == set(range(slack + 1))
    for values, (low, high) in (
        ([draw.angle_degrees for draw in draws], (-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)),
        ([draw.contrast for draw in draws], CONTRAST_RANGE),
        ([draw.saturation for draw in draws], SATURATION_RANGE),
    ):
        spread = (high - low) * 0.02
        assert low <= min(values) < low + spread and high - spread < max(values) <= high


def test_a_batchs_draw_depends_on_the_seed_rank_and_batch_index_only():
    config = tiny_pi0_config()
    samples = square_samples(config)
    run = Pi0Collator(Pi0Augmentation.for_run(config, seed=7, rank=0, spatial_forcing=False))
    uninterrupted = [run(samples)["images"] for _ in range(3)]
    resumed = Pi0Collator(Pi0Augmentation.for_run(config, seed=7, rank=0, spatial_forcing=False), next_batch=2)
    assert torch.equal(resumed(samples)["images"], uninterrupted[2])  # bit for bit
    assert not torch.equal(uninterrupted[1], uninterrupted[2])
    for seed, rank in ((8, 0), (7, 1)):
        other = Pi0Collator(Pi0Augmentation.for_run(config, seed=seed, rank=rank, spatial_forcing=False), 2)
        assert not torch.equal(other(samples)["images"], uninterrupted[2])
    assert IMAGES_BEFORE_COLOUR not in Pi0Collator()(samples)  # --image_aug False or validation: as collated


class RecordingTeacher(nn.Module):
    """A teacher that records what it reads."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher, self.inputs = teacher, []

    def forward(self, images: torch.Tensor, camera_points: torch.Tensor | None = None):
        self.inputs.append((images, camera_points))
        return self.teacher(images, camera_points)


@pytest.mark.parametrize("teacher", ["rgb", "geometry"])
def test_the_rgb_and_geometry_teachers_read_the_unaugmented_frames(teacher):
    config = tiny_pi0_config(image_keys=["base_0_rgb"], vocab_size=50, tokenizer_max_length=8)
    plain, augmented = collate(config, spatial_forcing=True, batch_index=5)
    assert not torch.equal(augmented["images"], plain["images"])  # the student's frames are augmented
    torch.manual_seed(0)
    fixed = {
        "rgb": RGBTeacher(16, config.patch_size),
        "geometry": GeometryTeacher(16, config.patch_size, (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)),
    }[teacher]
    model = SimpleNamespace(
        vla=golden_pi0(config),
        aligner=SpatialForcingAligner(pi0_align_config(config, tap_layer=1, vggt_dim=8)),
        teacher=RecordingTeacher(fixed),
    )
    losses = pi0_losses(SimpleNamespace(teacher=teacher, vggt_image_size=112), model, augmented, torch.device("cpu"))
    assert 0 < losses["align_loss"].item() < 2
    [(images, camera_points)] = model.teacher.inputs
    expected = pi0_teacher_images(plain["images"], plain["letterbox_masks"], config.image_size)
    assert torch.equal(images, expected) and torch.equal(camera_points, plain["camera_points"])


def test_the_rotation_samples_openpis_grid():
    """openpi rotates by sampling at (x cos - y sin, x sin + y cos) for x, y on ``linspace(-1, 1, side)``, read with
    ``align_corners=False``; the crop at (0, 0) is 53 of 56 pixels resized back bilinearly."""
    images = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    angle = math.radians(3.0)
    rows, columns = torch.meshgrid(torch.linspace(-1, 1, 56), torch.linspace(-1, 1, 56), indexing="ij")
    rotated = torch.stack(
        (columns * math.cos(angle) - rows * math.sin(angle), columns * math.sin(angle) + rows * math.cos(angle)), -1
    )
    cropped = F.interpolate(images[..., :53, :53], size=(56, 56), mode="bilinear", align_corners=False)
    expected = F.grid_sample(cropped, rotated.expand(2, -1, -1, -1), mode="bilinear", align_corners=False)
    draw = CameraDraw((0, 0), 3.0, 1.0, 1.0, 1.0)
    # affine_grid's matmul rounds the grid differently by CPU (seen: 2.6e-6 on one Xeon, within 1e-6 on others); a
    # sampling grid off by a tenth of a pixel differs here by 0.1 (measured).
    torch.testing.assert_close(crop_and_rotate(images, draw), expected, rtol=0, atol=1e-5)
    assert torch.equal(crop_and_rotate(images, CameraDraw((0, 0), 0.05, 1.0, 1.0, 1.0)), cropped)  # |angle| <= 0.1
