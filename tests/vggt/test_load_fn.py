"""Preprocessing: image files to VGGT input (crop / pad modes) and OpenVLA pixel values to teacher frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vggt.utils.load_fn import load_and_preprocess_images, vla_pixels_to_vggt_images

DINO_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
DINO_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _write_image(path: Path, height: int, width: int, mode: str = "RGB", seed: int = 0) -> Path:
    channels = 4 if mode == "RGBA" else 3
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return path


def _pil_bicubic(path: Path, height: int, width: int) -> torch.Tensor:
    image = Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0


def test_crop_mode_resizes_landscape_to_width_518(tmp_path):
    path = _write_image(tmp_path / "landscape.png", 60, 80)  # 4:3
    images = load_and_preprocess_images([path])
    assert images.shape == (1, 3, 392, 518)  # 60 * 518 / 80 = 388.5 -> 28 patches
    torch.testing.assert_close(images[0], _pil_bicubic(path, 392, 518), rtol=0, atol=0)


def test_crop_mode_center_crops_tall_images_to_518(tmp_path):
    path = _write_image(tmp_path / "portrait.png", 80, 60)
    images = load_and_preprocess_images([path], mode="crop")
    assert images.shape == (1, 3, 518, 518)
    resized = _pil_bicubic(path, 686, 518)  # 80 * 518 / 60 = 690.7 -> 49 patches
    torch.testing.assert_close(images[0], resized[:, 84 : 84 + 518], rtol=0, atol=0)


def test_pad_mode_pads_with_white_to_a_518_square(tmp_path):
    path = _write_image(tmp_path / "landscape.png", 60, 80)
    images = load_and_preprocess_images([path], mode="pad")
    assert images.shape == (1, 3, 518, 518)
    # 392 rows of image, 126 rows of white: 63 on top, 63 below.
    assert torch.all(images[0, :, :63] == 1.0) and torch.all(images[0, :, 63 + 392 :] == 1.0)
    torch.testing.assert_close(images[0, :, 63 : 63 + 392], _pil_bicubic(path, 392, 518), rtol=0, atol=0)


def test_pad_mode_scales_the_longer_side_of_portraits(tmp_path):
    path = _write_image(tmp_path / "portrait.png", 80, 60)
    images = load_and_preprocess_images([path], mode="pad")
    # Width 60 * 518 / 80 = 388.5 -> 392, padded by 63 columns on each side.
    torch.testing.assert_close(images[0, :, :, 63 : 63 + 392], _pil_bicubic(path, 518, 392), rtol=0, atol=0)
    assert torch.all(images[0, :, :, :63] == 1.0)


def test_images_of_different_shapes_are_padded_white_to_the_largest(tmp_path):
    square = _write_image(tmp_path / "square.png", 50, 50)
    landscape = _write_image(tmp_path / "landscape.png", 60, 80, seed=1)
    images = load_and_preprocess_images([square, landscape])
    assert images.shape == (2, 3, 518, 518)
    assert torch.all(images[1, :, :63] == 1.0)  # 392 rows centred in 518
    torch.testing.assert_close(images[1, :, 63 : 63 + 392], _pil_bicubic(landscape, 392, 518), rtol=0, atol=0)


def test_transparent_pixels_become_white(tmp_path):
    pixels = np.zeros((28, 28, 4), dtype=np.uint8)  # fully transparent black
    path = tmp_path / "transparent.png"
    Image.fromarray(pixels, "RGBA").save(path)
    assert torch.all(load_and_preprocess_images([path]) == 1.0)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        load_and_preprocess_images([_write_image(tmp_path / "a.png", 28, 28)], mode="stretch")
    with pytest.raises(ValueError, match="image_path_list is empty"):
        load_and_preprocess_images([])


def _fused_pixel_values(raw: torch.Tensor) -> torch.Tensor:
    """OpenVLA's fused-backbone input from raw [B, n, 3, H, W] images: per camera [DINOv2 norm | SigLIP norm]."""
    dino = (raw - DINO_MEAN) / DINO_STD
    siglip = (raw - 0.5) / 0.5
    return torch.cat((dino, siglip), dim=2).flatten(1, 2)  # [B, 6n, H, W]


def test_vla_pixels_become_denormalised_bicubic_518_frames_in_camera_order():
    raw = torch.rand(2, 2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    frames = vla_pixels_to_vggt_images(_fused_pixel_values(raw), num_images=2)
    assert frames.shape == (2, 2, 3, 518, 518) and frames.dtype == torch.float32
    expected = F.interpolate(raw.flatten(0, 1), size=(518, 518), mode="bicubic", align_corners=False)
    torch.testing.assert_close(frames, expected.view(2, 2, 3, 518, 518), rtol=0, atol=1e-5)
    # Bicubic overshoot is kept, as upstream (no clamp).
    assert frames.min() < 0 or frames.max() > 1


def test_vla_pixels_undo_the_normalisation_like_torchvision():
    """The inverse is torchvision's normalize with mean -m/s and std 1/s, to the bit."""
    pixel_values = torch.randn(1, 6, 14, 14, generator=torch.Generator().manual_seed(1))
    frames = vla_pixels_to_vggt_images(pixel_values, num_images=1, target_size=14)
    mean = torch.tensor([-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)])
    std = torch.tensor([1 / s for s in (0.229, 0.224, 0.225)])
    expected = (pixel_values[0, :3] - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    expected = F.interpolate(expected[None], size=(14, 14), mode="bicubic", align_corners=False)
    assert torch.equal(frames[0, 0], expected[0])


def test_vla_pixels_follow_the_crop_mode_size_rule():
    pixel_values = torch.rand(1, 6, 28, 56)
    # Height 28 * 518 / 56 = 259 = 18.5 patches, rounded half to even -> 18 patches.
    assert vla_pixels_to_vggt_images(pixel_values, num_images=1).shape == (1, 1, 3, 252, 518)


def test_vla_pixels_with_the_wrong_channel_count_are_rejected():
    with pytest.raises(ValueError, match=r"num_images=2.*\(1, 6, 28, 28\)"):
        vla_pixels_to_vggt_images(torch.rand(1, 6, 28, 28), num_images=2)
