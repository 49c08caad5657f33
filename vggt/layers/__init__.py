"""Transformer building blocks shared by the DINOv2 patch embedding and the VGGT aggregator."""

from vggt.layers.attention import Attention
from vggt.layers.block import Block
from vggt.layers.layer_scale import LayerScale
from vggt.layers.mlp import Mlp
from vggt.layers.patch_embed import PatchEmbed
from vggt.layers.rope import RotaryPositionEmbedding2D, grid_positions

__all__ = [
    "Attention",
    "Block",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "RotaryPositionEmbedding2D",
    "grid_positions",
]
