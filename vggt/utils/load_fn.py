"""Image preprocessing for VGGT: files to [N, 3, H, W] in [0, 1], and OpenVLA pixel values to VGGT frames."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import to_tensor

from vggt.constants import IMAGENET_MEAN, IMAGENET_STD, VGGT_IMAGE_SIZE

PATCH_SIZE = 14
PRESERVE_MODES = ("crop", "pad")


def _round_to_patches(length: float) -> int:
    """Nearest multiple of the patch size (Python rounding, as upstream)."""
    return round(length / PATCH_SIZE) * PATCH_SIZE


def crop_mode_size(height: int, width: int, target_size: int = VGGT_IMAGE_SIZE) -> tuple[int, int]:
    """Resize target of "crop" mode before the crop: width ``target_size``, height scaled to a multiple of 14."""
    return _round_to_patches(height * (target_size / width)), target_size


def pad_mode_size(height: int, width: int, target_size: int = VGGT_IMAGE_SIZE) -> tuple[int, int]:
    """Resize target of "pad" mode: the longer side ``target_size``, the other scaled to a multiple of 14."""
    if width >= height:
        return _round_to_patches(height * (target_size / width)), target_size
    return target_size, _round_to_patches(width * (target_size / height))


def _center_crop_height(image: torch.Tensor, target_size: int) -> torch.Tensor:
    """Keeps the middle ``target_size`` rows of ``[..., H, W]`` when ``H`` is larger."""
    height = image.shape[-2]
    if height <= target_size:
        return image
    top = (height - target_size) // 2
    return image[..., top : top + target_size, :]


def _pad_centered(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pads ``[3, h, w]`` with white (1.0) to ``[3, height, width]``; top and left get the smaller half."""
    pad_height, pad_width = height - image.shape[-2], width - image.shape[-1]
    top, left = pad_height // 2, pad_width // 2
    return F.pad(image, (left, pad_width - left, top, pad_height - top), mode="constant", value=1.0)


def _open_rgb(path: str | Path) -> Image.Image:
    """Opens an image as RGB; transparent pixels are composited onto white."""
    image = Image.open(path)
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def load_and_preprocess_images(image_path_list: Sequence[str | Path], mode: str = "crop") -> torch.Tensor:
    """Loads images for VGGT as ``[N, 3, H, W]`` float in [0, 1], H and W multiples of 14.

    "crop": resize (PIL bicubic) to width 518 keeping the aspect ratio, then center-crop the height to at most
    518. "pad": resize so the longer side is 518, then pad with white to 518 x 518. Images that still differ in size
    are padded with white, centred, to the largest height and width.
    """
    if len(image_path_list) == 0:
        raise ValueError("image_path_list is empty: at least one image is needed")
    if mode not in PRESERVE_MODES:
        raise ValueError(f"mode must be one of {PRESERVE_MODES}, got {mode!r}")
    images = []
    for path in image_path_list:
        image = _open_rgb(path)
        size_rule = crop_mode_size if mode == "crop" else pad_mode_size
        new_height, new_width = size_rule(image.height, image.width)
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
        tensor = to_tensor(image)  # [3, h, w] in [0, 1]
        if mode == "crop":
            tensor = _center_crop_height(tensor, VGGT_IMAGE_SIZE)
        else:
            tensor = _pad_centered(tensor, VGGT_IMAGE_SIZE, VGGT_IMAGE_SIZE)
        images.append(tensor)
    max_height = max(image.shape[-2] for image in images)
    max_width = max(image.shape[-1] for image in images)
    return torch.stack([_pad_centered(image, max_height, max_width) for image in images])


def vla_pixels_to_vggt_images(
    pixel_values: torch.Tensor,
    num_images: int,
    target_size: int = VGGT_IMAGE_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Spatial Forcing's teacher input: OpenVLA's fused-backbone pixel values to VGGT frames.

    ``pixel_values`` [B, 6 * num_images, H, W] stacks, per camera, the DINOv2-normalised image (3 channels) and the
    SigLIP-normalised one. The DINOv2 channels of each camera are de-normalised with ``mean``/``std`` (no clamp),
    resized as in "crop" mode (bicubic tensor interpolation, ``align_corners=False``, no antialias) and stacked
    as frames: ``[B, num_images, 3, H', target_size]`` float32 (H' = target_size for square inputs).
    """
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 6 * num_images:
        raise ValueError(
            f"pixel_values must be [B, 6 * num_images, H, W] = [B, {6 * num_images}, H, W] for "
            f"num_images={num_images}, got shape {tuple(pixel_values.shape)}"
        )
    batch, _, height, width = pixel_values.shape
    dino_images = pixel_values.float().reshape(batch, num_images, 6, height, width)[:, :, :3]  # [B, n, 3, H, W]
    # The inverse normalisation as a normalisation with mean -m/s and std 1/s, computed like torchvision's.
    device = pixel_values.device
    inverse_mean = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=device).view(3, 1, 1)
    inverse_std = torch.tensor([1 / s for s in std], device=device).view(3, 1, 1)
    rgb = (dino_images - inverse_mean) / inverse_std  # ~[0, 1]
    new_height, new_width = crop_mode_size(height, width, target_size)
    resized = F.interpolate(
        rgb.reshape(batch * num_images, 3, height, width),
        size=(new_height, new_width),
        mode="bicubic",
        align_corners=False,
    )  # [B*n, 3, new_height, target_size]
    resized = _center_crop_height(resized, target_size)
    return resized.reshape(batch, num_images, 3, *resized.shape[-2:])
