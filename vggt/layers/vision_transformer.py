"""DINOv2 ViT with register tokens: VGGT's patch embedding, whose weights live in the VGGT checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vggt.layers.block import Block, run_block
from vggt.layers.patch_embed import PatchEmbed


@dataclass(frozen=True)
class DinoVariant:
    """Width and depth of one DINOv2 size."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


# Names as VGGT's ``patch_embed`` argument spells them.
DINO_VARIANTS: dict[str, DinoVariant] = {
    "dinov2_vits14_reg": DinoVariant(embed_dim=384, depth=12, num_heads=6),
    "dinov2_vitb14_reg": DinoVariant(embed_dim=768, depth=12, num_heads=12),
    "dinov2_vitl14_reg": DinoVariant(embed_dim=1024, depth=24, num_heads=16),
    "dinov2_vitg14_reg": DinoVariant(embed_dim=1536, depth=40, num_heads=24),
}


class DinoVisionTransformer(nn.Module):
    """DINOv2 encoder: patchify, prepend cls, add (interpolated) position embeddings, insert registers, run blocks.

    Token order is ``[cls, registers, patches]``. ``pos_embed`` covers cls plus an ``img_size / patch_size`` square
    grid and is resized (bicubic, antialiased, to the exact target grid) for other input sizes.
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        init_values: float | None = 1.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        num_patches = (img_size // patch_size) ** 2
        # Parameter registration order gives the checkpoint's state-dict order.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        # Masked-image-modelling token from DINOv2 pre-training; unused here, kept so the checkpoint loads strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, norm_eps=1e-6) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Initialises the token parameters (layers keep PyTorch's defaults; real weights come from checkpoints)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        # trunc_normal_ at std 1e-6 is a normal draw (the +-2 bounds never bind), and it stays cheap on the meta device.
        nn.init.trunc_normal_(self.cls_token, std=1e-6)
        nn.init.trunc_normal_(self.register_tokens, std=1e-6)

    def interpolate_pos_encoding(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """Position embeddings for a ``grid_height x grid_width`` patch grid: ``[1, 1 + h*w, D]`` (cls first)."""
        num_stored = self.pos_embed.shape[1] - 1
        if grid_height == grid_width and grid_height * grid_width == num_stored:
            return self.pos_embed
        stored_side = math.isqrt(num_stored)
        pos_embed = self.pos_embed.float()
        cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, stored_side, stored_side, -1).permute(0, 3, 1, 2)  # [1, D, s, s]
        patch_pos = F.interpolate(patch_pos, size=(grid_height, grid_width), mode="bicubic", antialias=True)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, -1)  # [1, h*w, D]
        return torch.cat((cls_pos, patch_pos), dim=1).to(self.pos_embed.dtype)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images`` [N, 3, H, W] (normalised) -> normed tokens split as in DINOv2: cls [N, D], registers
        [N, R, D], patches [N, h*w, D], plus the un-normed sequence ``x_prenorm`` [N, 1 + R + h*w, D]."""
        batch = images.shape[0]
        grid_height, grid_width = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        x = self.patch_embed(images)  # [N, h*w, D]
        x = torch.cat((self.cls_token.expand(batch, -1, -1), x), dim=1)  # [N, 1 + h*w, D]
        x = x + self.interpolate_pos_encoding(grid_height, grid_width)
        x = torch.cat((x[:, :1], self.register_tokens.expand(batch, -1, -1), x[:, 1:]), dim=1)  # [N, 1+R+h*w, D]
        for block in self.blocks:
            x = run_block(block, x)
        x_norm = self.norm(x)
        first_patch = 1 + self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1:first_patch],
            "x_norm_patchtokens": x_norm[:, first_patch:],
            "x_prenorm": x,
        }


def build_dino(
    name: str, img_size: int = 518, patch_size: int = 14, num_register_tokens: int = 4
) -> DinoVisionTransformer:
    """The DINOv2 encoder VGGT's ``patch_embed=name`` builds (LayerScale init 1.0)."""
    if name not in DINO_VARIANTS:
        raise ValueError(f"Unknown patch_embed {name!r}; expected one of {sorted(DINO_VARIANTS)} or a name with 'conv'")
    variant = DINO_VARIANTS[name]
    return DinoVisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=variant.embed_dim,
        depth=variant.depth,
        num_heads=variant.num_heads,
        mlp_ratio=variant.mlp_ratio,
        num_register_tokens=num_register_tokens,
    )
