"""Pre-norm transformer block with LayerScale, shared by the DINOv2 encoder and the VGGT aggregator."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vggt.layers.attention import Attention
from vggt.layers.layer_scale import LayerScale
from vggt.layers.mlp import Mlp
from vggt.layers.rope import RotaryPositionEmbedding2D


class Block(nn.Module):
    """``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``.

    The DINOv2 encoder uses ``norm_eps=1e-6`` without QK-norm or RoPE; the aggregator uses ``norm_eps=1e-5`` (also
    for its QK-norm), QK-norm and a shared 2D RoPE. ``init_values=None`` drops LayerScale.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: float | None = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
        rope: RotaryPositionEmbedding2D | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm, norm_eps=norm_eps, rope=rope
        )
        self.ls1 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, N, C]; ``positions`` [B, N, 2] for RoPE -> [B, N, C]."""
        x = x + self.ls1(self.attn(self.norm1(x), positions))
        return x + self.ls2(self.mlp(self.norm2(x)))


def run_block(block: nn.Module, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Runs ``block``, with activation checkpointing while training with gradients (as upstream VGGT does)."""
    if block.training and torch.is_grad_enabled():
        return checkpoint(block, x, positions, use_reentrant=False)
    return block(x, positions)
