"""Image to patch tokens with one strided convolution."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Splits ``[N, C, H, W]`` images into ``patch_size`` squares and embeds each: ``[N, (H/p)*(W/p), embed_dim]``.

    ``img_size`` is the training resolution, kept for reference; any H and W that are multiples of ``patch_size``
    are accepted.
    """

    def __init__(self, img_size: int = 518, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 1024) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Image size {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                "resize the images first (e.g. vggt.utils.load_fn.load_and_preprocess_images)."
            )
        x = self.proj(images)  # [N, D, H/p, W/p]
        return x.flatten(2).transpose(1, 2)  # [N, (H/p)*(W/p), D], row-major patches
